import pytest
import torch

from kbk.data.batching import TokenBatches, num_windows


def test_windows_cover_every_token_once_and_targets_shift_by_one():
    tokens = torch.arange(1001)
    batches = TokenBatches(tokens, n_seq=10, batch_size=7, shuffle=True, seed=3)
    assert batches.n_windows == num_windows(1001, 10) == 100
    seen = []
    for x, y in batches.epoch(0):
        assert torch.equal(y, x + 1)  # the stream is arange, so targets are inputs shifted by one
        seen.append(x.reshape(-1))
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(1000))


def test_epoch_order_is_a_function_of_seed_and_epoch_and_resume_skips_exactly():
    tokens = torch.randint(0, 50, (5000,))
    a = TokenBatches(tokens, n_seq=16, batch_size=4, seed=1)
    b = TokenBatches(tokens, n_seq=16, batch_size=4, seed=1)
    assert torch.equal(a.order(2), b.order(2))
    assert not torch.equal(a.order(2), a.order(3))
    full = list(a.epoch(2))
    resumed = list(b.epoch(2, start_batch=5))
    assert len(resumed) == len(full) - 5
    pairs = zip(full[5:], resumed, strict=True)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in pairs)


def test_eval_order_is_stream_order_and_drop_last_counts():
    tokens = torch.arange(101)
    batches = TokenBatches(tokens, n_seq=10, batch_size=3, shuffle=False, drop_last=True)
    assert len(batches) == 3 and batches.tokens_per_epoch == 90
    first, _ = next(iter(batches))
    assert torch.equal(first[:, 0], torch.tensor([0, 10, 20]))


def test_too_little_data_names_the_fix():
    with pytest.raises(ValueError, match="lower model.n_seq"):
        TokenBatches(torch.arange(10), n_seq=10, batch_size=1)
