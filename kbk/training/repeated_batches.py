"""`trainer.overfit_batches`: the same few training batches every epoch, to check that a model can drive its loss
towards zero (debug=overfit). A model that cannot memorise one batch has a bug, not a tuning problem."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kbk.data.batching import TokenBatches


class RepeatedBatches:
    """The first `n` batches of `batches`' first epoch, and nothing else, in every epoch: the interface of
    `TokenBatches` that the trainer uses (`len`, `epoch`, `batch_size`, `n_seq`)."""

    def __init__(self, batches: TokenBatches, n: int) -> None:
        self.batches = batches
        self.kept = [b for _, b in zip(range(n), batches.epoch(0), strict=False)]
        self.batch_size = batches.batch_size
        self.n_seq = batches.n_seq

    def __len__(self) -> int:
        return len(self.kept)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.kept[start_batch:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
