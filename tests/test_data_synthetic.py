import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kbk.data import TokenBatches, load_corpus, load_synthetic
from kbk.data.synthetic import HMM, make_hmm, stationary
from kbk.errors import DataError


def brute_force_nll(hmm: HMM, window: list[int]) -> list[float]:
    """-log P(x_{t+1} | x_0..x_t) from prefix probabilities summed over every hidden path."""
    A, E, pi = hmm.transition.tolist(), hmm.emission.tolist(), hmm.initial.tolist()
    S = len(A)

    def prefix_prob(n: int) -> float:
        total = 0.0
        for path in itertools.product(range(S), repeat=n):
            p = pi[path[0]] * E[path[0]][window[0]]
            for t in range(1, n):
                p *= A[path[t - 1]][path[t]] * E[path[t]][window[t]]
            total += p
        return total

    return [-math.log(prefix_prob(t + 2) / prefix_prob(t + 1)) for t in range(len(window) - 1)]


def random_dense_hmm(seed: int, S: int = 3, V: int = 4) -> HMM:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(S, S, generator=g, dtype=torch.float64) + 0.05
    E = torch.rand(S, V, generator=g, dtype=torch.float64) + 0.05
    A, E = A / A.sum(1, keepdim=True), E / E.sum(1, keepdim=True)
    return HMM(A, E, stationary(A))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_algorithm_matches_enumeration_over_hidden_paths(seed):
    dense = random_dense_hmm(seed)
    sparse = make_hmm(4, 3, 2, 1.0, np.random.default_rng(seed))
    for hmm in (dense, sparse):
        windows = torch.tensor(list(itertools.product(range(4), repeat=4))[seed::7])
        got = hmm.window_nll(windows)
        want = torch.tensor([brute_force_nll(hmm, w.tolist()) for w in windows], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_loss_floor_is_the_mean_over_the_evaluators_windows():
    corpus = load_synthetic(
        vocab_size=4, n_states=3, n_successors=2, n_train_tokens=50, n_val_tokens=41, seed=5
    )
    n_seq = 3
    per_target = []
    for x, y in TokenBatches(corpus.val, n_seq, batch_size=4, shuffle=False):
        for window in torch.cat([x, y[:, -1:]], 1):
            per_target += brute_force_nll(corpus.source_model, window.tolist())
    assert len(per_target) == 13 * n_seq  # (41 - 1) // 3 windows, every target counted once
    assert corpus.loss_floor(n_seq) == pytest.approx(sum(per_target) / len(per_target), rel=1e-10)


def test_true_conditionals_reach_the_floor_and_simpler_models_do_not():
    corpus = load_synthetic(n_train_tokens=100_000, n_val_tokens=8_000, seed=3)
    n_seq, V = 32, corpus.vocab_size
    floor = corpus.loss_floor(n_seq)
    counts = torch.bincount(corpus.train, minlength=V).double() + 1
    unigram = (counts / counts.sum()).log()
    bigram = torch.ones(V, V, dtype=torch.float64)
    bigram.index_put_(
        (corpus.train[:-1], corpus.train[1:]), torch.ones(corpus.train.numel() - 1).double(), True
    )
    bigram = (bigram / bigram.sum(1, keepdim=True)).log()
    losses = {"oracle": [], "unigram": [], "bigram": []}
    for x, y in TokenBatches(corpus.val, n_seq, batch_size=16, shuffle=False):
        oracle = corpus.source_model.next_token_log_probs(x)
        for name, logits in (
            ("oracle", oracle),
            ("unigram", unigram.expand_as(oracle)),
            ("bigram", bigram[x]),
        ):
            losses[name].append(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum"))
    n_targets = (corpus.val.numel() - 1) // n_seq * n_seq
    loss = {k: torch.stack(v).sum().item() / n_targets for k, v in losses.items()}
    assert loss["oracle"] == pytest.approx(floor, rel=1e-9)
    assert loss["unigram"] > floor + 0.4  # the hidden state carries much more than token frequencies
    assert loss["bigram"] > floor + 0.1


def test_streams_are_drawn_from_the_model_they_claim():
    corpus = load_synthetic(n_train_tokens=100_000, n_val_tokens=20_000, seed=1)
    hmm, n_seq = corpus.source_model, 64
    train_nll = hmm.mean_window_nll(corpus.train, n_seq)
    assert train_nll == pytest.approx(corpus.loss_floor(n_seq), abs=0.05)
    other = load_synthetic(n_train_tokens=2, n_val_tokens=2, seed=2).source_model  # same shapes, other chain
    assert other.mean_window_nll(corpus.train, n_seq) > train_nll + 0.5
    marginal = hmm.initial @ hmm.emission  # stationary token distribution
    empirical = torch.bincount(corpus.train, minlength=corpus.vocab_size).double() / corpus.train.numel()
    assert (empirical - marginal).abs().sum().item() < 0.05


def test_hmm_structure_is_sparse_stochastic_and_stationary():
    hmm = load_synthetic(
        vocab_size=64, n_states=16, n_successors=3, n_train_tokens=10, n_val_tokens=10
    ).source_model
    assert ((hmm.transition > 0).sum(1) == 3).all()
    torch.testing.assert_close(hmm.transition.sum(1), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(hmm.emission.sum(1), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(hmm.initial @ hmm.transition, hmm.initial)
    # every state emits the same Zipf probabilities, each in its own token order
    sorted_rows = hmm.emission.sort(1, descending=True).values
    torch.testing.assert_close(sorted_rows, sorted_rows[:1].expand_as(sorted_rows))
    assert not torch.equal(hmm.emission.argmax(1), hmm.emission.argmax(1)[:1].expand(16))


def test_generation_depends_only_on_the_seed():
    kw = dict(n_train_tokens=5_000, n_val_tokens=1_000)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = load_synthetic(seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), torch_state) and (np.random.get_state()[1] == np_state).all()
    torch.manual_seed(123)
    np.random.seed(123)
    b = load_synthetic(seed=7, **kw)
    c = load_synthetic(seed=8, **kw)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:1_000], a.val)  # train and val come from different sub-seeds
    assert a.train.dtype == torch.long and a.train.max() < a.vocab_size and a.train.min() >= 0


def test_loss_floor_is_cached_per_n_seq(monkeypatch):
    corpus = load_corpus("synthetic", n_train_tokens=1_000, n_val_tokens=2_000)
    first = corpus.loss_floor(16)
    monkeypatch.setattr(corpus.source_model, "mean_window_nll", lambda *a: pytest.fail("recomputed"))
    assert corpus.loss_floor(16) == first
    with pytest.raises(DataError, match="n_val_tokens"):
        load_synthetic(n_train_tokens=100, n_val_tokens=10).loss_floor(16)


def test_bad_options_raise_data_errors_that_name_them():
    with pytest.raises(ValueError, match="^n_successors=5 is not allowed: it must be an integer between 1 and "
                                         "n_states=4$"):
        load_synthetic(n_states=4, n_successors=5)  # SyntheticConfig's own check, a plain ValueError
    with pytest.raises(DataError, match="^data.vocab_size=1 is not allowed: it must be an integer >= 2$"):
        load_corpus("synthetic", vocab_size=1)
    with pytest.raises(DataError, match="n_state.*options are"):
        load_corpus("synthetic", n_state=4)
    with pytest.raises(DataError, match="synthetic, text, wikitext2"):
        load_corpus("wikitext103")


def test_id_tokenizer_round_trips_and_real_text_has_no_floor(tmp_path):
    corpus = load_synthetic(n_train_tokens=100, n_val_tokens=100)
    ids = corpus.val[:20].tolist()
    assert corpus.tokenizer.encode(corpus.tokenizer.decode(ids)) == ids
    (tmp_path / "a.txt").write_text("some real text\n" * 20)
    assert load_corpus("text", path=tmp_path / "a.txt").loss_floor(8) is None


def test_streams_start_from_the_stationary_distribution():
    # the floor's forward pass starts every window from pi; that is exact only if the stream starts there too
    hmm = make_hmm(8, 4, 2, 1.0, np.random.default_rng(2))  # a chain whose pi is far from every single state
    rng = np.random.default_rng(1)
    first = torch.tensor([hmm.sample(1, rng).item() for _ in range(4000)])
    empirical = torch.bincount(first, minlength=8).double() / first.numel()
    assert (empirical - hmm.initial @ hmm.emission).abs().sum().item() < 0.08
    assert min((empirical - hmm.emission[s]).abs().sum().item() for s in range(4)) > 0.2


def test_the_test_stream_is_a_third_draw_from_the_same_hmm_with_its_own_exact_floor():
    import numpy as np

    c = load_synthetic(n_train_tokens=2_000, n_val_tokens=3_000, seed=5)
    assert c._test is None  # not sampled until asked for: training never draws it
    test = c.test()
    assert test.numel() == c.val.numel() and not torch.equal(test, c.val) and test.max() < c.vocab_size
    # the fourth child of the data seed: train and val keep the streams they had before the test split existed
    seeds = np.random.SeedSequence(5).spawn(4)
    assert torch.equal(c.train, c.source_model.sample(2_000, np.random.default_rng(seeds[1])))
    assert torch.equal(c.val, c.source_model.sample(3_000, np.random.default_rng(seeds[2])))
    assert torch.equal(test, c.source_model.sample(3_000, np.random.default_rng(seeds[3])))
    assert torch.equal(load_synthetic(n_train_tokens=2_000, n_val_tokens=3_000, seed=5).test(), test)
    assert c.loss_floor(16, "test") == pytest.approx(c.source_model.mean_window_nll(test, 16), rel=1e-12)
    assert c.loss_floor(16, "test") != c.loss_floor(16, "val")
    assert c.loss_floor(16, "test") == pytest.approx(c.loss_floor(16, "val"), abs=0.1)  # same source, same floor
