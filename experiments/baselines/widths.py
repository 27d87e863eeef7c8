"""The GPT widths of the baselines study: kbk.models.transformer.match_transformer_width against the tiny
ResNet-BK (d_model 64, 2 layers, 4 experts top-1) with Koopman on (all parameters, the Koopman companions
included) and off (the language model alone, which is what runs at inference), per dataset and context length.

    python experiments/baselines/widths.py

The GPT has the tiny model's depth (2 layers) and 4 heads; its width is a multiple of 4. The Koopman companions
(lift, unlift and K per layer) are not used by the standard forward pass, so "matched to Koopman on" gives the GPT
the companions' parameters to spend on language modelling; "matched to Koopman off" matches what predicts.
"""

from __future__ import annotations

from kbk.models.koopman_lm import KoopmanOptions, KoopmanResNetBKLM
from kbk.models.transformer import match_transformer_width, transformer_param_count

VOCAB = {"synthetic": 256, "kjv": 8002}  # conf/data/synthetic.yaml; kjv: 8,000 words + <unk> + <eos>
N_LAYERS, N_HEADS = 2, 4


def resnet_bk_params(vocab: int, n_seq: int, koopman: bool) -> int:
    net = KoopmanResNetBKLM(vocab, d_model=64, n_layers=N_LAYERS, n_seq=n_seq, num_experts=4, top_k=1,
                            koopman=KoopmanOptions() if koopman else None)
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    print("| data | n_seq | ResNet-BK | params | GPT d_model | GPT params |")
    print("|---|---:|---|---:|---:|---:|")
    for data, vocab in VOCAB.items():
        for n_seq in (128, 512, 2048):
            for koopman in (True, False):
                target = resnet_bk_params(vocab, n_seq, koopman)
                d = match_transformer_width(target, vocab, N_LAYERS, n_seq, N_HEADS)
                gpt = transformer_param_count(vocab, d, N_LAYERS, n_seq)
                label = "Koopman on" if koopman else "Koopman off"
                print(f"| {data} | {n_seq} | {label} | {target:,} | {d} | {gpt:,} |")


if __name__ == "__main__":
    main()
