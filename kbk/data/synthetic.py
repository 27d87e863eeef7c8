"""A synthetic source with a known answer: tokens from a hidden Markov model, and its exact loss floor.

Hidden states follow a sparse Markov chain (each state moves to `n_successors` states: the next one on a
ring, which makes the chain irreducible so its stationary distribution is unique, plus random others), and
each state emits from its own permutation of one Zipf distribution over the vocabulary. A model must track
the hidden state from context to beat the unigram entropy; the Bayes-optimal loss is what the forward
algorithm predicts.

Both streams start from the stationary distribution, so for ANY window of the validation stream the hidden
state at its first token is distributed as the stationary distribution, and the forward algorithm from there
gives the exact P(x_{t+1} | x_0..x_t within the window), the best any model that sees only the window can do.
The test stream (`Corpus.test()`, as long as the validation stream) is a third independent draw from the same
model, sampled only when asked for, with its own exact floor (`Corpus.loss_floor(n_seq, "test")`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kbk.data.batching import window_starts
from kbk.data.corpus import Corpus
from kbk.data.tokenizers import IdTokenizer
from kbk.errors import require, settings_or_fields


class HMM:
    """`transition[i, j]` = P(h'=j | h=i), `emission[i, v]` = P(x=v | h=i), `initial` = P(h_0) (float64)."""

    def __init__(self, transition: torch.Tensor, emission: torch.Tensor, initial: torch.Tensor) -> None:
        self.transition = transition.double()
        self.emission = emission.double()
        self.initial = initial.double()

    @property
    def n_states(self) -> int:
        return self.transition.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    def _state_beliefs(self, windows: torch.Tensor):
        """Yield P(h_t | x_0..x_{t-1}) for t = 1..L-1, shape (W, S), by the normalised forward recursion."""
        emit_t = self.emission.T  # (V, S): row v is P(x=v | h) for every h
        belief = self.initial.expand(windows.shape[0], -1)
        for t in range(windows.shape[1] - 1):
            posterior = belief * emit_t[windows[:, t]]
            posterior = posterior / posterior.sum(1, keepdim=True)
            belief = posterior @ self.transition
            yield belief

    def next_token_log_probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The oracle model: log P(x_{t+1} = v | x_0..x_t) at every position of (B, n) inputs -> (B, n, V)."""
        padded = torch.cat([inputs, inputs[:, :1]], 1)  # the recursion wants one token past the last input
        beliefs = torch.stack(list(self._state_beliefs(padded)), 1)
        return (beliefs @ self.emission).log()

    def window_nll(self, windows: torch.Tensor) -> torch.Tensor:
        """-log P(x_{t+1} | x_0..x_t) for each target of each (W, L) window -> (W, L-1)."""
        emit_t = self.emission.T
        return torch.stack(
            [
                -(b * emit_t[windows[:, t + 1]]).sum(1).log()
                for t, b in enumerate(self._state_beliefs(windows))
            ],
            1,
        )

    def mean_window_nll(self, tokens: torch.Tensor, n_seq: int) -> float:
        """Mean of `window_nll` over the evaluator's non-overlapping windows of a token stream."""
        starts = window_starts(tokens.numel(), n_seq)
        windows = tokens[starts[:, None] + torch.arange(n_seq + 1)[None, :]]
        return self.window_nll(windows).mean().item()

    def sample(self, n_tokens: int, rng: np.random.Generator) -> torch.Tensor:
        """A stream of `n_tokens` tokens whose first hidden state is drawn from `initial`."""
        trans = self.transition.numpy()
        succ = [np.flatnonzero(row).tolist() for row in trans]
        cum = [np.cumsum(row[s]).tolist() for row, s in zip(trans, succ, strict=True)]
        for c in cum:
            c[-1] = 1.0  # so rounding can never push a draw past the last successor
        h = min(int(np.searchsorted(np.cumsum(self.initial.numpy()), rng.random())), self.n_states - 1)
        u = rng.random(n_tokens).tolist()
        states = [0] * n_tokens
        # the chain is inherently sequential; plain-list lookups keep 500k steps to a fraction of a second
        for t in range(n_tokens):
            states[t] = h
            h = succ[h][bisect.bisect_right(cum[h], u[t])]
        states = torch.tensor(states)
        cdf = self.emission.cumsum(1)
        draws = torch.from_numpy(rng.random(n_tokens))
        tokens = torch.empty(n_tokens, dtype=torch.long)
        for s in range(self.n_states):  # one state at a time: a (n_tokens, V) table of CDFs would not fit
            at = states == s
            tokens[at] = torch.searchsorted(cdf[s], draws[at])
        return tokens.clamp_(max=self.vocab_size - 1)


def stationary(transition: torch.Tensor) -> torch.Tensor:
    """The unique pi with pi P = pi, sum(pi) = 1, of an irreducible chain (one linear solve)."""
    s = transition.shape[0]
    a = transition.T.double() - torch.eye(s, dtype=torch.float64)
    a[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    b = torch.zeros(s, dtype=torch.float64)
    b[-1] = 1.0
    pi = torch.linalg.solve(a, b).clamp_(min=0)
    return pi / pi.sum()


def make_hmm(
    vocab_size: int, n_states: int, n_successors: int, zipf_exponent: float, rng: np.random.Generator
) -> HMM:
    trans = np.zeros((n_states, n_states))
    for i in range(n_states):
        ring = (i + 1) % n_states
        others = [j for j in range(n_states) if j != ring]
        succ = [ring, *rng.choice(others, size=n_successors - 1, replace=False).tolist()]
        trans[i, succ] = rng.dirichlet(np.ones(n_successors))
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** zipf_exponent
    zipf /= zipf.sum()
    emit = np.zeros((n_states, vocab_size))
    for i in range(n_states):
        # state i's r-th most likely token is the r-th entry of its own random permutation
        emit[i, rng.permutation(vocab_size)] = zipf
    transition = torch.from_numpy(trans)
    return HMM(transition, torch.from_numpy(emit), stationary(transition))


@dataclass
class SyntheticConfig:
    """The hidden Markov model behind `data=synthetic` and how much text it writes."""

    vocab_size: int = 256
    n_states: int = 32
    n_successors: int = 3
    zipf_exponent: float = 1.2
    n_train_tokens: int = 300_000
    n_val_tokens: int = 30_000
    seed: int = 0

    def __post_init__(self) -> None:
        require(self, "vocab_size", lambda v: v >= 2, "an integer >= 2")
        require(self, "n_states", lambda v: v >= 1, "an integer >= 1")
        require(self, "n_successors", lambda v: 1 <= v <= self.n_states,
                f"an integer between 1 and n_states={self.n_states}")
        require(self, "zipf_exponent", lambda v: v >= 0, "a number >= 0")
        for name in ("n_train_tokens", "n_val_tokens"):
            require(self, name, lambda v: v >= 2, "an integer >= 2")


def load_synthetic(config: SyntheticConfig | None = None, **settings: Any) -> Corpus:
    """Train, validation and (on demand) test streams from one seeded HMM; independent of the global RNGs.
    `config`, or `SyntheticConfig`'s fields as keywords."""
    c = settings_or_fields(SyntheticConfig, config, settings)
    vocab_size, n_val_tokens = c.vocab_size, c.n_val_tokens
    # spawn(n)'s i-th child depends on i only, so the fourth (test) seed leaves the first three streams as they were
    model_seed, train_seed, val_seed, test_seed = np.random.SeedSequence(c.seed).spawn(4)
    hmm = make_hmm(vocab_size, c.n_states, c.n_successors, c.zipf_exponent, np.random.default_rng(model_seed))
    train = hmm.sample(c.n_train_tokens, np.random.default_rng(train_seed))
    val = hmm.sample(n_val_tokens, np.random.default_rng(val_seed))
    return Corpus(train, val, vocab_size, "synthetic", IdTokenizer(vocab_size), source_model=hmm,
                  test_loader=lambda: hmm.sample(n_val_tokens, np.random.default_rng(test_seed)))
