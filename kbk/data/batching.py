"""Cut a token stream into language-model windows and batch them, resumably.

A window is `n_seq + 1` consecutive tokens: inputs are the first `n_seq`, targets the last `n_seq`. Windows do not
overlap (window `i` starts at `i * n_seq`), so every token is predicted exactly once per epoch. The order of the
training windows is a permutation drawn from `seed + epoch`, so batch `j` of epoch `e` is a pure function of
(`seed`, `e`, `j`): a resumed run asks for the same batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def num_windows(n_tokens: int, n_seq: int) -> int:
    """How many non-overlapping `n_seq`-token windows (plus one target token) fit in `n_tokens` tokens."""
    return max(0, (n_tokens - 1) // n_seq)


def window_starts(n_tokens: int, n_seq: int) -> torch.Tensor:
    """Start offsets of the windows, in stream order."""
    return torch.arange(num_windows(n_tokens, n_seq)) * n_seq


class TokenBatches:
    """Batches of `(inputs, targets)` windows from a 1-D token tensor.

    `shuffle=True` permutes the windows every epoch (training); `shuffle=False` keeps stream order (evaluation).
    `drop_last` drops a final partial batch so every step sees `batch_size * n_seq` tokens.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        n_seq: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
        if n_seq <= 0 or batch_size <= 0:
            raise ValueError(f"n_seq and batch_size must be positive, got n_seq={n_seq}, batch_size={batch_size}")
        n = num_windows(tokens.numel(), n_seq)
        if n == 0:
            raise ValueError(
                f"the data has {tokens.numel()} tokens, too few for one window of n_seq={n_seq} (+1 target): "
                f"lower model.n_seq or use more data"
            )
        self.tokens = tokens.long()
        self.n_seq = n_seq
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.starts = window_starts(tokens.numel(), n_seq)

    @property
    def n_windows(self) -> int:
        return self.starts.numel()

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n_windows // self.batch_size
        return -(-self.n_windows // self.batch_size)

    @property
    def tokens_per_epoch(self) -> int:
        return (self.n_windows if not self.drop_last else len(self) * self.batch_size) * self.n_seq

    def order(self, epoch: int) -> torch.Tensor:
        """Window start offsets in the order epoch `epoch` visits them."""
        if not self.shuffle:
            return self.starts
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self.starts[torch.randperm(self.n_windows, generator=gen)]

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + torch.arange(self.n_seq + 1)[None, :]
        windows = self.tokens[idx]
        return windows[:, :-1], windows[:, 1:]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of `epoch`, skipping the first `start_batch` (to resume mid-epoch)."""
        order = self.order(epoch)
        for j in range(start_batch, len(self)):
            yield self.batch(order[j * self.batch_size : (j + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
