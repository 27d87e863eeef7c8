"""`experiment=seed_colab` builds the seed's Colab run, checked through kbk's own data pipeline and builders.

The data is a small corpus in WikiText-2's hub layout (parquet rows, one line each) written offline here, with
more distinct words than the vocabulary holds, so the 30,000-id vocabulary and the 5,066,952 parameters come out
of tokenising it, not out of a number passed by hand.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import compose_kbk
from omegaconf import OmegaConf

from kbk import build
from kbk.config import settings_of, validate
from kbk.data.wikitext2 import HUB_CONFIG
from kbk.errors import ConfigError
from kbk.training.schedules import KoopmanWeightSchedule

SEED_PARAMS = 5_066_952  # the seed's Colab report
FREQUENT, RARE = 30_500, 600  # distinct training words seen twice or more / once


def word(i: int) -> str:
    return f"w{i:05d}"


def write_wikitext_layout(root, rows_train, rows_valid):
    folder = root / HUB_CONFIG
    folder.mkdir(parents=True)
    for split, rows in (("train", rows_train), ("validation", rows_valid)):
        pq.write_table(pa.table({"text": rows}), folder / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def seed_corpus(tmp_path_factory):
    """Settings and corpus of `experiment=seed_colab` on an offline WikiText-2-layout copy.

    Word i < 29,999 appears 3 times, 29,999 <= i < FREQUENT twice, and FREQUENT <= i < FREQUENT + RARE once, so
    the vocabulary must be <unk> + words 0..29,998 exactly, whatever the tie-breaking among equal counts."""
    root = tmp_path_factory.mktemp("seed_colab")
    counts = [3 if i < 29_999 else 2 if i < FREQUENT else 1 for i in range(FREQUENT + RARE)]
    stream = [word(i) for i, c in enumerate(counts) for _ in range(c)]
    rows = [" = Heading = \n", ""] + [" " + " ".join(stream[j : j + 25]) + " \n" for j in range(0, len(stream), 25)]
    valid = [" " + " ".join(word(i) for i in range(k, FREQUENT + RARE, 97)) + " \n" for k in range(40)]
    write_wikitext_layout(root / "wikitext", rows, valid)
    settings = OmegaConf.to_object(compose_kbk([
        "experiment=seed_colab", f"data.path={root / 'wikitext'}", f"data.cache_dir={root / 'cache'}",
        f"data.hf_cache_dir={root / 'hf'}",
    ]))
    validate(settings)
    return settings, build.corpus(settings)


def resnet_bk_parameters(vocab: int, d: int = 64, layers: int = 4, n_seq: int = 128, experts: int = 4,
                         k: int = 256) -> int:
    """The seed's model, counted by hand: embeddings, blocks (LN, MoE, potential, BK output, scale, Koopman),
    final LN and LM head."""
    moe = experts * ((d * 2 * d + 2 * d) + (2 * d * d + d)) + (d * experts + experts)
    bk = (d + 1) + (2 * d + d) + 1  # v_proj, output_proj (2 -> d), bk_scale
    koopman = (d * k + k) + (k * k + k) + k * k + (k * k + k) + (k * d + d)  # lift, K, unlift
    block = 2 * d + moe + bk + koopman
    return vocab * d + n_seq * d + layers * block + 2 * d + (d * vocab + vocab)


def test_the_seeds_vocabulary_comes_out_of_the_data_pipeline(seed_corpus):
    settings, corpus = seed_corpus
    tok = corpus.tokenizer
    assert corpus.vocab_size == 30_000
    assert tok.itos[0] == "<unk>" and "<eos>" not in tok.stoi  # no end-of-line token
    assert set(tok.itos[1:]) == {word(i) for i in range(29_999)}  # the 29,999 most frequent training words
    assert tok.encode(f"{word(0)} {word(29_998)} {word(29_999)} {word(FREQUENT)} unseen") == [
        tok.stoi[word(0)], tok.stoi[word(29_998)], 0, 0, 0]
    assert corpus.train.numel() == 3 * 29_999 + 2 * (FREQUENT - 29_999) + RARE + 3  # + "= Heading =", no <eos>


def test_the_seeds_model_has_its_parameter_count_end_to_end(seed_corpus):
    settings, corpus = seed_corpus
    net = build.model(settings, corpus.vocab_size)
    assert sum(p.numel() for p in net.parameters()) == resnet_bk_parameters(corpus.vocab_size) == SEED_PARAMS
    train, val = build.batches(settings, corpus)  # the data feeds the seed's windows and batch
    inputs, targets = next(iter(train))
    assert inputs.shape == targets.shape == (32, 128)


def test_the_parameter_formula_follows_the_vocabulary():
    settings = OmegaConf.to_object(compose_kbk(["experiment=seed_colab"]))
    for vocab in (1_000, 30_002):
        assert sum(p.numel() for p in build.model(settings, vocab).parameters()) == resnet_bk_parameters(vocab)
    assert resnet_bk_parameters(30_002) - SEED_PARAMS == 2 * 129  # each extra id: an embedding row and a head row


def test_seed_colab_selects_the_seeds_components(seed_corpus):
    settings, corpus = seed_corpus
    m, k = settings.model, settings.koopman
    assert (m.causal, m.bk_grad, m.moe_scale_by_router) == (False, "seed_blend", False)
    assert (k.linear_loss, k.linear_weight, k.recon_weight, k.pred_weight) == ("huber", 1.0, 0.0, 0.0)
    assert (k.sample_tokens, k.detach_backbone, k.detach_targets) == (None, False, False)
    net = build.model(settings, corpus.vocab_size)
    layer = net.blocks[0].layer
    assert (layer.causal, layer.bk_grad, layer.moe.scale_by_router) == (False, "seed_blend", False)
    assert net.blocks[0].koopman.config.linear_loss == "huber"
    # K0 = I + 0.01·randn, the seed's init: the off-diagonal noise has standard deviation 0.01
    noise = net.blocks[0].koopman.initial_operator - torch.eye(256)
    assert noise.std().item() == pytest.approx(0.01, rel=0.05)


def test_seed_colab_schedule_gives_the_seeds_weights_and_the_documented_edge_cases_hold():
    """The preset's linear schedule on whole epochs logs the seed's 0, 0, 0, 0, 0.05. Its comments document where
    kbk's schedules differ from the seed's (step levels 1/3 and 2/3 against 0.33 and 0.67; warmup == total gives
    max_weight at warmup against the seed's min_weight there): if either changes, so must the comments."""
    settings = OmegaConf.to_object(compose_kbk(["experiment=seed_colab"]))
    schedule = build.schedule(settings, total_steps=5 * 498)
    assert [schedule.weight(e) for e in range(5)] == [0, 0, 0, 0, pytest.approx(0.05)]
    step = KoopmanWeightSchedule("step", 0.0, 0.3, warmup=0, total=4, unit="step")
    assert [step.weight(p) for p in (0, 1, 2, 3, 4)] == [0, pytest.approx(0.1), pytest.approx(0.2), 0.3, 0.3]
    edge = KoopmanWeightSchedule("linear", 0.0, 0.1, warmup=3, total=3, unit="epoch")
    assert [edge.weight(e) for e in (2, 3, 4)] == [0, 0.1, 0.1]


def test_the_seeds_unscaled_moe_refuses_top2_before_any_work():
    with pytest.raises(ConfigError, match=r"^model.top_k=2 is not allowed: it must be 1 with "
                                          r"model.moe_scale_by_router=false \(the seed's unscaled MoE is top-1 only\)"):
        settings_of(compose_kbk(["experiment=seed_colab", "model.top_k=2"]))


@pytest.mark.parametrize("data, max_vocab", [("synthetic", None), ("kjv", 8000)])
def test_seed_colab_runs_on_other_data_with_that_datas_vocabulary(data, max_vocab):
    """The seed's vocabulary lives in data=wikitext2, not in the preset: `experiment=seed_colab data=...` compares
    with kbk's defaults on the same tokens (and data=synthetic, which has no word vocabulary, still composes)."""
    settings = OmegaConf.to_object(compose_kbk(["experiment=seed_colab", f"data={data}"]))
    validate(settings)
    assert settings.data.max_vocab == max_vocab and settings.model.bk_grad == "seed_blend"
