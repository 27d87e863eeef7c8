"""python -m kbk.generate: text sampled from a trained model, the quickest sanity check of a language model.

    python -m kbk.generate outputs/runs/<name>/<time>/checkpoints/last.pt --prompt "In the beginning" --tokens 50
    python -m kbk.generate <MLflow run id> --prompt "And God said" --temperature 0 --koopman

The checkpoint (or run id) is found and the model rebuilt as `python -m kbk.evaluate` does it, with the training
vocabulary. Each new token sees at most the model's last `n_seq` tokens (the context window; older ones are cropped
from the left). `--temperature 0` is greedy (the most likely token every time); otherwise the logits are divided by
the temperature, cut to the `--top-k` most likely, and sampled from a generator seeded with `--seed`, so the same
seed gives the same text. The prompt is tokenised as the training text was: a word or character the vocabulary
lacks becomes `<unk>` (with a note on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kbk.errors import KbkError, command_line
from kbk.evaluate import Trained, load_trained

PROG = "kbk.generate"


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids as the model was trained to read text; unknown words or characters noted."""
    from kbk.data.tokenizers import EOS, CharTokenizer, WordTokenizer

    try:
        ids = tokenizer.encode(prompt)
    except ValueError:  # the synthetic source's tokens are written as integers
        raise KbkError(f"--prompt {prompt!r}: this model reads token ids, integers from 0 to "
                       f"{tokenizer.vocab_size - 1} separated by spaces. Fix: e.g. --prompt '3 17 5'") from None
    if isinstance(tokenizer, WordTokenizer | CharTokenizer):
        pieces = tokenizer.words(prompt) if isinstance(tokenizer, WordTokenizer) else list(
            prompt.lower() if tokenizer.lowercase else prompt)
        unknown = list(dict.fromkeys(p for p, i in zip(pieces, ids, strict=True) if i == 0))
        if unknown:
            what = "words" if isinstance(tokenizer, WordTokenizer) else "characters"
            print(f"{PROG}: note: prompt {what} not in the training vocabulary, read as <unk>: "
                  f"{', '.join(map(repr, unknown))}", file=sys.stderr)
    if isinstance(tokenizer, WordTokenizer) and tokenizer.eos:
        if ids and ids[-1] == tokenizer.stoi[EOS] and not prompt.endswith("\n"):
            ids = ids[:-1]  # the line goes on: only a prompt that ends its line ends in <eos>
        if not ids:
            ids = [tokenizer.stoi[EOS]]  # an empty prompt: the start of a line
    if not ids:
        raise KbkError("--prompt is empty and this vocabulary has no <eos> to start from. Fix: give a prompt")
    return ids


def generate(trained: Trained, ids: list[int], tokens: int, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, koopman: bool = False) -> list[int]:
    """`tokens` new token ids after `ids`, sampled (or greedy with `temperature=0`) from the model."""
    import torch

    model, device = trained.model, trained.device
    if koopman and not model.has_koopman:
        raise KbkError("--koopman: this model has no Koopman operators (it was trained with koopman=off or is a "
                       "Transformer). Fix: drop --koopman")
    generator = torch.Generator(device=device).manual_seed(seed)
    context = torch.tensor(ids, dtype=torch.long, device=device)
    new: list[int] = []
    model.eval()
    with torch.inference_mode():
        for _ in range(tokens):
            window = context[-model.n_seq:][None]
            logits = (model(window, modes="koopman") if koopman else model(window)).logits[0, -1].float()
            if temperature == 0:
                token = logits.argmax()
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.numel():
                    cutoff = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < cutoff, float("-inf"))
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[0]
            context = torch.cat([context, token.view(1)])
            new.append(int(token))
    return new


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a checkpoint (last.pt, or its folder) or an MLflow run id")
    p.add_argument("--prompt", default="", help="the text to continue (default: empty, the start of a line)")
    p.add_argument("--tokens", type=int, default=50, help="how many tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy; default 1.0")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=int, default=0, help="same seed, same text (default 0)")
    p.add_argument("--koopman", action="store_true", help="sample in Koopman mode (every block by its operator)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda, cuda:<index>")
    p.add_argument("--config", help="the run folder (or its .hydra/config.yaml) the checkpoint was trained with")
    p.add_argument("--uri", help="MLflow store holding a run id (default: the SQLite store under outputs/)")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name, value, ok, allowed in (
        ("--tokens", args.tokens, args.tokens >= 1, "an integer >= 1"),
        ("--temperature", args.temperature, args.temperature >= 0, "a number >= 0 (0: greedy)"),
        ("--top-k", args.top_k, args.top_k is None or args.top_k >= 1, "an integer >= 1"),
    ):
        if not ok:
            raise KbkError(f"{name} {value} is out of range. Fix: give {allowed}")


@command_line(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    trained = load_trained(args.target, args.device, args.config, args.uri)
    ids = prompt_ids(trained.corpus.tokenizer, args.prompt)
    new = generate(trained, ids, args.tokens, args.temperature, args.top_k, args.seed, args.koopman)
    shown = ids if args.prompt else []  # an empty prompt's start-of-line token is not text the user gave
    print(trained.corpus.tokenizer.decode(shown + new))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
