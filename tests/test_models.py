import pytest
import torch
import torch.nn.functional as F

from kbk.koopman.config import DMDConfig, KoopmanConfig
from kbk.models.config import ResNetBKConfig
from kbk.models.koopman_lm import KoopmanOptions, KoopmanResNetBKLM, initial_operator
from kbk.models.moe import SparseMoE
from kbk.models.output import LMOutput


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


SEED_SHAPE = dict(vocab_size=30_000, d_model=64, n_layers=4, n_seq=128, num_experts=4, top_k=1)


def tiny(koopman=None, **kw):
    koopman = koopman or KoopmanOptions(dim=16, sample_tokens=None)
    torch.manual_seed(0)
    args = dict(vocab_size=50, d_model=16, n_layers=2, n_seq=12, num_experts=3, top_k=1, dropout=0.0)
    args.update(kw)
    return KoopmanResNetBKLM(**args, koopman=koopman)


def test_seed_configuration_has_the_seeds_parameter_count():
    # The seed's Colab table: 5,066,952 parameters with the operator as a parameter (K trained by gradient too).
    model = KoopmanResNetBKLM(**SEED_SHAPE, koopman=KoopmanOptions(dim=256, operator_update="both"))
    assert n_params(model) == 5_066_952
    # Owned by DMD alone, K is a buffer: four 256x256 operators fewer.
    dmd_owned = KoopmanResNetBKLM(**SEED_SHAPE, koopman=KoopmanOptions(dim=256, operator_update="dmd"))
    assert n_params(dmd_owned) == 5_066_952 - 4 * 256 * 256
    assert n_params(KoopmanResNetBKLM(**SEED_SHAPE, koopman=None)) == 5_066_952 - 4 * 230_208


def test_moe_top1_matches_a_dense_reference():
    torch.manual_seed(1)
    moe = SparseMoE(8, num_experts=3, top_k=1, dropout=0.0)
    x = torch.randn(2, 5, 8)
    probs = F.softmax(moe.router(x), dim=-1)
    best = probs.argmax(-1)
    dense = torch.stack([e(x) for e in moe.experts], dim=-2)  # (2, 5, 3, 8)
    expected = dense.gather(-2, best[..., None, None].expand(2, 5, 1, 8)).squeeze(-2) * probs.max(-1).values[..., None]
    torch.testing.assert_close(moe(x), expected)


def test_moe_top2_routes_to_two_experts():
    torch.manual_seed(2)
    moe = SparseMoE(8, num_experts=4, top_k=2, dropout=0.0)
    x = torch.randn(3, 8)
    probs = F.softmax(moe.router(x), dim=-1)
    gate, idx = probs.topk(2, dim=-1)
    expected = sum(torch.stack([moe.experts[int(idx[t, s])](x[t]) * gate[t, s] for t in range(3)]) for s in range(2))
    torch.testing.assert_close(moe(x), expected)


def test_moe_unscaled_is_the_seeds_top1_and_its_router_gets_no_gradient():
    torch.manual_seed(1)
    moe = SparseMoE(8, num_experts=3, top_k=1, dropout=0.0, scale_by_router=False)
    x = torch.randn(2, 5, 8)
    best = moe.router(x).argmax(-1)  # the seed routed by the argmax of the logits
    dense = torch.stack([e(x) for e in moe.experts], dim=-2)
    expected = dense.gather(-2, best[..., None, None].expand(2, 5, 1, 8)).squeeze(-2)  # not scaled by a probability
    out = moe(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert moe.router.weight.grad is None and moe.router.bias.grad is None
    assert moe.experts[int(best[0, 0])][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="top_k=1"):
        SparseMoE(8, num_experts=3, top_k=2, scale_by_router=False)


@pytest.mark.parametrize("t", [0, 5, 11])
def test_causal_model_never_sees_later_tokens(t):
    model = tiny(causal=True).eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 7) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a[:, t], b[:, t])


def test_seed_bidirectional_bk_core_leaks_the_next_token():
    # The seed's BK-Core diagonal depends on every position's potential: position t-1's logits move when token t does.
    model = tiny(causal=False).eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 7) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert (a[:, 5] - b[:, 5]).abs().max() > 1e-6


def test_operator_convention_is_column_vectors_everywhere():
    model = tiny()
    dyn = model.blocks[0].koopman
    k = torch.randn(16, 16)
    with torch.no_grad():
        dyn.operator.copy_(k)
    z = torch.randn(5, 16)
    torch.testing.assert_close(dyn.advance(z), (k @ z.T).T)
    # Koopman mode: x + ψ(K φ(LN x)) − LN x
    x = torch.randn(1, 4, 16)
    u = model.blocks[0].norm(x)
    out, _ = model.blocks[0](x, mode="koopman")
    torch.testing.assert_close(out, x + dyn.unlift(dyn.lift(u) @ k.T) - u)


def test_koopman_terms_match_their_definitions():
    model = tiny()
    block = model.blocks[0]
    dyn = block.koopman
    x = torch.randn(2, 6, 16)
    _, t = block(x, sample=torch.arange(12))
    u = block.norm(x).reshape(-1, 16)
    nxt = u + block.layer(block.norm(x)).reshape(-1, 16)
    z, zn = dyn.lift(u), dyn.lift(nxt)
    torch.testing.assert_close(t["linear"], ((zn - z @ dyn.operator.T) ** 2).mean())
    torch.testing.assert_close(t["recon"], ((dyn.unlift(zn) - nxt) ** 2).mean())
    torch.testing.assert_close(t["pred"], ((dyn.unlift(z @ dyn.operator.T) - nxt) ** 2).mean())
    torch.testing.assert_close(t["total"], t["linear"] + t["recon"] + t["pred"])


def test_huber_linear_loss_is_the_seeds_smooth_l1_on_the_linear_term():
    model = tiny(KoopmanOptions(dim=16, sample_tokens=None, linear_loss="huber", init_scale=3.0))
    block = model.blocks[0]
    dyn = block.koopman
    x = 3 * torch.randn(2, 6, 16)
    _, t = block(x, sample=torch.arange(12))
    u = block.norm(x).reshape(-1, 16)
    nxt = u + block.layer(block.norm(x)).reshape(-1, 16)
    err = dyn.lift(nxt) - dyn.lift(u) @ dyn.operator.T
    # smooth L1 with beta 1: quadratic below 1, linear above; the errors here reach both branches
    assert (err.abs() < 1).any() and (err.abs() > 1).any()
    huber = torch.where(err.abs() < 1, 0.5 * err**2, err.abs() - 0.5).mean()
    torch.testing.assert_close(t["linear"], huber)
    assert not torch.allclose(t["linear"], (err**2).mean())
    with pytest.raises(ValueError, match="linear_loss"):
        KoopmanOptions(linear_loss="l1")


@pytest.mark.parametrize("detach", [True, False])
def test_detach_backbone_decides_whether_koopman_terms_move_the_lm(detach):
    model = tiny(koopman=KoopmanOptions(dim=16, sample_tokens=None, detach_backbone=detach))
    _, terms = model(torch.randint(0, 50, (2, 12)), koopman_terms=True)
    torch.stack([t["total"] for t in terms]).sum().backward()
    backbone_grad = model.blocks[0].layer.v_proj.weight.grad
    assert model.blocks[0].koopman.lift[0].weight.grad.abs().sum() > 0
    if detach:
        assert backbone_grad is None
    else:
        assert backbone_grad is not None and backbone_grad.abs().sum() > 0


def test_sample_tokens_limits_the_koopman_rows():
    model = tiny(koopman=KoopmanOptions(dim=16, sample_tokens=7))
    _, terms = model(torch.randint(0, 50, (2, 12)), koopman_terms=True)
    assert all(t["z"].shape == (7, 16) for t in terms)
    model = tiny(koopman=KoopmanOptions(dim=16, sample_tokens=None))
    _, terms = model(torch.randint(0, 50, (2, 12)), koopman_terms=True)
    assert all(t["z"].shape == (24, 16) for t in terms)


def test_operator_ownership():
    assert isinstance(tiny(koopman=KoopmanOptions(dim=8, operator_update="gradient")).blocks[0].koopman.operator,
                      torch.nn.Parameter)
    dmd_owned = tiny(koopman=KoopmanOptions(dim=8, operator_update="dmd")).blocks[0].koopman
    assert not isinstance(dmd_owned.operator, torch.nn.Parameter)
    assert "operator" in dict(dmd_owned.named_buffers())


def test_initial_operator_spectral_radius_starts_near_one():
    torch.manual_seed(0)
    for k in (128, 256, 512):
        radius = torch.linalg.eigvals(initial_operator(k, "identity_noise", 0.01)).abs().max().item()
        assert abs(radius - 1.0) < 0.02  # the seed's I + 0.01·randn had ≈ 1 + 0.01·√k: 1.12 … 1.22
        seed_radius = torch.linalg.eigvals(torch.eye(k) + 0.01 * torch.randn(k, k)).abs().max().item()
        assert seed_radius > 1.08
    ortho = torch.linalg.eigvals(initial_operator(64, "orthogonal", 0.0)).abs()
    torch.testing.assert_close(ortho, torch.ones(64), atol=1e-5, rtol=0)


def test_skip_mode_is_the_identity_and_modes_are_per_layer():
    model = tiny().eval()
    idx = torch.randint(0, 50, (1, 12))
    x = model.token_embedding(idx) + model.position_embedding(torch.arange(12))
    expected = model.lm_head(model.final_norm(model.blocks[1](x)[0]))
    logits, _ = model(idx, modes=["skip", "standard"])
    torch.testing.assert_close(logits, expected)


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="^dim=0 is not allowed: it must be an integer > 0$"):
        KoopmanOptions(dim=0)
    with pytest.raises(ValueError, match="^operator_update='adam' is not allowed: it must be one of gradient, dmd, "
                                         "both$"):
        KoopmanOptions(operator_update="adam")


def test_settings_come_as_one_dataclass_or_as_its_fields_and_koopman_off_is_the_plain_lm():
    torch.manual_seed(0)
    by_config = KoopmanResNetBKLM(50, ResNetBKConfig(d_model=16, n_layers=2, n_seq=8), koopman=KoopmanConfig(dim=8),
                                  dmd=DMDConfig(buffer_size=7))
    assert by_config.config == ResNetBKConfig(d_model=16, n_layers=2, n_seq=8)
    assert by_config.blocks[0].koopman.dmd.config.buffer_size == 7
    with pytest.raises(TypeError, match="not both"):
        KoopmanResNetBKLM(50, ResNetBKConfig(), d_model=16)
    off = KoopmanResNetBKLM(50, ResNetBKConfig(d_model=16, n_layers=2, n_seq=8), koopman=KoopmanConfig(enabled=False))
    assert not off.has_koopman and off.koopman_dynamics() == []
    with pytest.raises(ValueError, match=r"^top_k=2 is not allowed: it must be 1 with moe_scale_by_router=false"):
        ResNetBKConfig(top_k=2, moe_scale_by_router=False)


@pytest.mark.parametrize("operator_update", ["both", "gradient", "dmd"])
def test_the_model_owns_its_parameter_groups_the_operators_never_decay(operator_update):
    model = tiny(koopman=KoopmanOptions(dim=8, operator_update=operator_update))
    groups = model.param_groups(weight_decay=0.05)
    operators = [d.operator for d in model.koopman_dynamics() if isinstance(d.operator, torch.nn.Parameter)]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0][: 1 + bool(operators)]
    assert [id(p) for p in groups[-1]["params"]] == [id(p) for p in operators] or not operators
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_forward_returns_an_lm_output_and_the_model_computes_its_koopman_diagnostics():
    torch.manual_seed(0)
    model = tiny(koopman=KoopmanOptions(dim=8, sample_tokens=None)).eval()
    idx = torch.randint(0, 50, (2, 8))
    out = model(idx, koopman_terms=True)
    assert isinstance(out, LMOutput) and out.logits.shape == (2, 8, 50) and len(out.koopman_terms) == 2
    stats = model.koopman_diagnostics(idx, n_tokens=10)
    for layer in (0, 1):
        assert {f"koopman/{layer}/{k}" for k in ("spectral_radius", "state_rel_err", "lift_saturation",
                                                 "dmd_condition")} <= set(stats)
    dyn = model.blocks[0].koopman
    terms = model.blocks[0](model.embed(idx), sample=torch.arange(10))[1]
    saturation = dyn.diagnostics(terms)["lift_saturation"]
    assert saturation == float((torch.tanh(dyn.lift[0](terms["u"])).abs() > 0.99).double().mean())
