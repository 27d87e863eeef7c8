import math

import pytest
import torch
import torch.nn.functional as F

from kbk.models.config import TransformerConfig
from kbk.models.transformer import TransformerLM, match_transformer_width, transformer_param_count
from tests.conftest import one_torch_thread


@pytest.fixture(autouse=True)
def one_thread():
    # These tensors are tiny: extra intra-op threads only add synchronisation, and on a shared 2-core machine
    # their spin-waiting made the overfit test take 12 s instead of 0.3 s.
    with one_torch_thread():
        yield


@pytest.mark.parametrize(
    "vocab, d, layers, heads, n_seq, tie",
    [(50, 16, 1, 2, 8, False), (97, 24, 3, 3, 33, False), (97, 24, 3, 4, 33, True), (10, 8, 1, 1, 4, False)],
)
def test_param_count_formula_equals_module(vocab, d, layers, heads, n_seq, tie):
    model = TransformerLM(vocab, TransformerConfig(d, layers, heads, n_seq), tie_weights=tie)
    n_params = sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once
    assert n_params == transformer_param_count(vocab, d, layers, n_seq, tie_weights=tie)
    # Independent of parameters()' deduplication: count distinct storages by hand.
    seen = {p.data_ptr(): p.numel() for p in model.state_dict().values()}
    assert sum(seen.values()) == n_params
    assert (model.head.weight is model.tok_emb.weight) == tie


def test_width_matching_hits_the_seed_koopman_size():
    # The seed's Koopman ResNet-BK: 5,066,952 parameters at vocab 30,000, 4 layers, n_seq 128.
    target = 5_066_952
    d = match_transformer_width(target, vocab_size=30_000, n_layers=4, n_seq=128, n_heads=4)
    count = transformer_param_count(30_000, d, 4, 128)
    assert d == 80 and count == 5_151_760 == 48 * 80**2 + 60_182 * 80 + 30_000
    assert abs(count - target) / target < 0.017  # +1.67%; the next multiple of 4 down, 76, gives -3.67%
    tied = match_transformer_width(target, 30_000, 4, 128, n_heads=4, tie_weights=True)
    assert tied == 136  # tying frees V·d, so the tied model is wider: 5,022,560 parameters, -0.88%
    assert abs(transformer_param_count(30_000, tied, 4, 128, tie_weights=True) - target) / target < 0.009


@pytest.mark.parametrize("target", [1_000, 12_345, 250_000, 5_066_952, 40_000_000])
@pytest.mark.parametrize("heads, layers, tie", [(1, 2, False), (4, 4, False), (6, 0, True)])
def test_width_matching_agrees_with_exhaustive_search(target, heads, layers, tie):
    def miss(d):
        return abs(transformer_param_count(1000, d, layers, 64, tie) - target)

    # The count increases with d, so once it passes twice the target no wider model can be closer.
    widths = []
    d = heads
    while transformer_param_count(1000, d, layers, 64, tie) <= 2 * target or not widths:
        widths.append(d)
        d += heads
    widths.append(d)
    best = min(widths, key=lambda d: (miss(d), d))
    assert match_transformer_width(target, 1000, layers, 64, heads, tie_weights=tie) == best


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=31, d_model=32, n_layers=2, n_heads=4, n_seq=12)
    args.update(kw)
    return TransformerLM(**args).double().eval()


def test_changing_token_t_changes_no_logits_before_t():
    model = _model()
    idx = torch.randint(0, 31, (3, 12))
    base = model(idx).logits
    for t in (0, 5, 11):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 31
        out = model(changed).logits
        assert torch.equal(out[:, :t], base[:, :t])
        # ... and every position from t on does change.
        assert (out[:, t:] - base[:, t:]).abs().amax(dim=-1).min() > 1e-8


def test_jacobian_of_logits_wrt_input_embeddings_is_causal():
    model = _model(seed=1)
    idx = torch.randint(0, 31, (2, 12))
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["emb"] = output

    handle = model.tok_emb.register_forward_hook(keep)
    logits = model(idx).logits
    handle.remove()
    s = 6
    logits[:, s].sum().backward()
    g = captured["emb"].grad.abs().sum(dim=-1)  # (B, N): influence of each input position on position s
    assert torch.all(g[:, s + 1 :] == 0)
    assert torch.all(g[:, : s + 1] > 0)


def test_attention_matches_an_explicit_masked_softmax_reference():
    model = _model(seed=2)
    attn = model.blocks[0].attn
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(32, dim=-1)
    heads = []
    for h in range(4):
        sl = slice(8 * h, 8 * (h + 1))
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    ref = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), ref, rtol=1e-10, atol=1e-12)


def test_tiny_model_overfits_a_repeated_sequence():
    torch.manual_seed(0)
    cycle = torch.randperm(16)[:8]  # 8 distinct tokens: the next token is a function of the current one
    seq = cycle.repeat(3)[:17]
    x, y = seq[:-1].unsqueeze(0), seq[1:].unsqueeze(0)
    model = TransformerLM(vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_seq=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5  # starts near ln 16 = 2.77
    assert loss.item() < 0.05


def test_dropout_only_in_training_and_bad_shapes_rejected():
    model = _model(dropout=0.5)
    idx = torch.randint(0, 31, (2, 12))
    assert torch.equal(model(idx).logits, model(idx).logits)
    model.train()
    assert not torch.equal(model(idx).logits, model(idx).logits)
    with pytest.raises(ValueError, match="exceeds the model's n_seq=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="^n_heads=4 is not allowed: it must be an integer > 0 dividing d_model=30$"):
        TransformerLM(31, d_model=30, n_layers=1, n_heads=4, n_seq=12)
