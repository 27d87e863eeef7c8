"""`python -m kbk.generate` on a model trained for a few steps (`python -m kbk.run`) on a tiny word corpus the test
writes: seeded sampling repeats, greedy decoding is the argmax continuation computed here from the model's own
logits (past the context window, in standard and Koopman mode), and the prompt is read as the training text was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL, clean_env, compose_kbk, kbk_command, latest_checkpoint, one_torch_thread
from omegaconf import OmegaConf

from kbk import build
from kbk.data.tokenizers import BpeTokenizer, CharTokenizer, IdTokenizer, WordTokenizer
from kbk.errors import KbkError
from kbk.evaluate import Trained
from kbk.evaluate import main as evaluate_main
from kbk.generate import generate, main, prompt_ids
from kbk.models.koopman_lm import KoopmanResNetBKLM
from kbk.paths import PROJECT_ROOT

N_SEQ = 16  # TINY_MODEL's model.n_seq
VERSES = ["In the beginning God created the heaven and the earth .", "And the earth was without form , and void .",
          "And God said , Let there be light : and there was light ."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, the overrides it was trained with) of a 12-step word model on a corpus with a test.txt."""
    tmp = tmp_path_factory.mktemp("generate")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for split, repeat in (("train", 60), ("valid", 8), ("test", 6)):
        (corpus / f"{split}.txt").write_text("\n".join(VERSES * repeat) + "\n")
    overrides = [*TINY_MODEL, "data=text", f"data.path={corpus}", "data.tokenizer=word", "tracking=none",
                 f"paths.outputs={tmp / 'outputs'}"]
    proc = subprocess.run(kbk_command(overrides), capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = latest_checkpoint(tmp / "outputs")
    return checkpoint, overrides


def generated(capsys, *args: str) -> tuple[str, str]:
    with one_torch_thread():
        assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def sample_args(checkpoint, seed: int) -> list[str]:
    return [str(checkpoint), "--prompt", "In the beginning", "--tokens", "30", "--temperature", "0.8", "--top-k", "5",
            "--seed", str(seed)]


def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(trained, capsys):
    checkpoint, _ = trained
    first, _ = generated(capsys, *sample_args(checkpoint, 0))
    again, _ = generated(capsys, *sample_args(checkpoint, 0))
    other, _ = generated(capsys, *sample_args(checkpoint, 1))
    assert first == again and first != other
    assert first.startswith("In the beginning ") and len(first.split()) >= 3 + 30 - first.count("\n")


@pytest.mark.parametrize("koopman", [False, True])
def test_greedy_is_the_argmax_continuation_of_the_models_own_logits(trained, capsys, koopman):
    checkpoint, overrides = trained
    settings = OmegaConf.to_object(compose_kbk(overrides))
    corpus = build.corpus(settings)
    model = build.model(settings, corpus.vocab_size)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    model.eval()
    tok = corpus.tokenizer
    ids = [tok.stoi[w] for w in "In the beginning".split()]
    with torch.inference_mode(), one_torch_thread():
        for _ in range(40):  # past n_seq=16: the context is cropped to the last 16 tokens
            logits, _ = model(torch.tensor([ids[-N_SEQ:]]), modes="koopman" if koopman else "standard")
            ids.append(int(logits[0, -1].argmax()))
    capsys.readouterr()  # (start-up lines of the build above)
    out, _ = generated(capsys, str(checkpoint), "--prompt", "In the beginning", "--tokens", "40", "--temperature", "0",
                       *(["--koopman"] if koopman else []))
    assert out == tok.decode(ids) + "\n"


def test_unknown_prompt_words_read_as_unk_with_one_note(trained, capsys):
    out, err = generated(capsys, str(trained[0]), "--prompt", "In the Zorg", "--tokens", "3")
    assert out.startswith("In the <unk> ")
    notes = [line for line in err.splitlines() if line.startswith("kbk.generate")]
    assert notes == ["kbk.generate: note: prompt words not in the training vocabulary, read as <unk>: 'Zorg'"]


def test_the_prompt_is_read_as_the_training_text_was(capsys):
    words = WordTokenizer.train("a b a\n")
    a, b, eos = words.stoi["a"], words.stoi["b"], words.stoi["<eos>"]
    assert prompt_ids(words, "a b") == [a, b]  # the line goes on: no <eos>
    assert prompt_ids(words, "a b\n") == [a, b, eos] and prompt_ids(words, "") == [eos]
    no_eos = WordTokenizer.train("a b", eos=False)
    assert prompt_ids(no_eos, "b") == [no_eos.stoi["b"]] and prompt_ids(no_eos, "b\n") == [no_eos.stoi["b"]]
    chars = CharTokenizer.train("abc")
    assert prompt_ids(chars, "abz") == [1, 2, 0] and "read as <unk>: 'z'" in capsys.readouterr().err
    with pytest.raises(KbkError, match="--prompt is empty"):
        prompt_ids(chars, "")
    assert prompt_ids(IdTokenizer(8), "3 7") == [3, 7]
    with pytest.raises(KbkError, match="integers from 0 to 7 separated by spaces"):
        prompt_ids(IdTokenizer(8), "3 x")
    with pytest.raises(KbkError, match=r"token ids must lie in \[0, 8\)"):
        prompt_ids(IdTokenizer(8), "3 8")
    bpe = BpeTokenizer.train("the cat sat on the mat\n" * 20, vocab_size=300)
    assert bpe.decode(prompt_ids(bpe, "the bat")) == "the bat" and capsys.readouterr().err == ""


def test_koopman_mode_needs_a_model_with_koopman_operators():
    model = KoopmanResNetBKLM(10, d_model=8, n_layers=1, n_seq=4, num_experts=1, koopman=None)
    plain = Trained(checkpoint=None, run_id=None, settings=None, corpus=None, model=model, step=0, device="cpu")
    assert len(generate(plain, [1, 2], 3, temperature=0)) == 3
    with pytest.raises(KbkError, match="--koopman: this model has no Koopman operators"):
        generate(plain, [1, 2], 3, koopman=True)


@pytest.mark.parametrize("args, message", [
    (["--tokens", "0"], "--tokens 0 is out of range. Fix: give an integer >= 1"),
    (["--temperature", "-1"], "--temperature -1.0 is out of range. Fix: give a number >= 0 (0: greedy)"),
    (["--top-k", "0"], "--top-k 0 is out of range. Fix: give an integer >= 1"),
])
def test_bad_arguments_are_one_line(trained, capsys, args, message):
    assert main([str(trained[0]), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"kbk.generate: error: {message}\n" and captured.out == ""


def test_a_missing_checkpoint_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kbk.generate", str(tmp_path / "none.pt"), "--prompt", "x"],
                          capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("kbk.generate: error: ") and proc.stderr.count("\n") == 1


def test_evaluate_reads_the_corpus_test_txt_with_the_training_vocabulary(trained, capsys):
    checkpoint, overrides = trained
    with one_torch_thread():
        assert evaluate_main([str(checkpoint), "--split", "test", "--format", "json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    corpus = build.corpus(OmegaConf.to_object(compose_kbk(overrides)))
    assert list(result["splits"]) == ["test"] and "loss_floor" not in result["splits"]["test"]
    assert result["splits"]["test"]["tokens"] == (corpus.test().numel() - 1) // N_SEQ * N_SEQ
    assert corpus.test().numel() == 6 * sum(len(v.split()) + 1 for v in VERSES)  # words and <eos> of test.txt
