"""BK-Core: forward against a dense inverse, backward against autograd through it, and the scans' indices."""

import pytest
import torch

from kbk.models.bk_core import _affine_scan, _ratio_scan, causal_resolvent_diagonal, resolvent_diagonal

Z_VALUES = [1j, 0.5 + 0.3j]


def random_diag(b, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (-2 + 6 * torch.rand(b, n, generator=g, dtype=torch.float64) - 3).to(dtype)  # -2 + v, v in ±3


def dense_resolvent(diag, z):
    """(H - zI)^{-1} from a dense complex128 inverse: the independent reference."""
    n = diag.shape[-1]
    off = torch.ones(n - 1, dtype=torch.complex128)
    t = torch.diag_embed(diag.to(torch.complex128) - z) + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.inv(t)


def max_rel_err(x, ref):
    return ((x.to(torch.complex128) - ref).abs() / ref.abs()).max().item()


def check_forward_against_dense(n, b, z):
    # Values exactly representable in float32, so one complex128 reference serves every input dtype.
    diag = random_diag(b, n, seed=n).float().double()
    ref = dense_resolvent(diag, z).diagonal(dim1=-2, dim2=-1)
    g128 = resolvent_diagonal(diag, z)
    g64 = resolvent_diagonal(diag.float(), z)
    assert g128.dtype == torch.complex128 and g64.dtype == torch.complex64
    assert max_rel_err(g128, ref) <= 1e-10
    assert max_rel_err(g64, ref) <= 1e-5
    # The dtype override, both ways.
    g32_128 = resolvent_diagonal(diag.float(), z, dtype=torch.complex128)
    assert g32_128.dtype == torch.complex128 and max_rel_err(g32_128, ref) <= 1e-10
    g64_64 = resolvent_diagonal(diag, z, dtype=torch.complex64)
    assert g64_64.dtype == torch.complex64 and max_rel_err(g64_64, ref) <= 1e-5
    # The plain-loop reference used where a dense inverse is too costly is checked here too.
    assert max_rel_err(sequential_resolvent(diag, z), ref) <= 1e-10


@pytest.mark.parametrize("z", Z_VALUES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 31, 32, 33, 100, 257, 1000, 2049])
def test_forward_matches_dense_inverse(n, z):
    check_forward_against_dense(n, 2 if n < 2000 else 1, z)


@pytest.mark.slow
@pytest.mark.parametrize("z", Z_VALUES)
def test_forward_matches_dense_inverse_at_4096(z):
    # A dense 4096 x 4096 complex128 inverse takes ~10 s on 2 cores; the default run reaches 4096 and 16384
    # through the plain-loop reference, itself checked against the dense inverse up to 2049.
    check_forward_against_dense(4096, 1, z)


@pytest.mark.parametrize("z", Z_VALUES)
@pytest.mark.parametrize("n", [2048, 4096, 16384])
def test_long_rows_are_finite_bounded_and_accurate(n, z):
    diag = random_diag(2, n, seed=1)
    ref = sequential_resolvent(diag, z)  # a plain complex128 loop of the same recurrences
    for cdtype, tol in ((torch.complex64, 1e-5), (torch.complex128, 1e-10)):
        g = resolvent_diagonal(diag, z, dtype=cdtype)
        assert g.dtype == cdtype and torch.isfinite(torch.view_as_real(g)).all()
        assert (g.abs() <= (1 + 1e-5) / z.imag).all()
        assert max_rel_err(g, ref) <= tol


@pytest.mark.parametrize("z", [0.05j, 0.01j])
def test_complex64_near_the_real_axis_is_as_accurate_as_a_plain_loop(z):
    # Rounding errors are amplified ~1/Im z whatever the method; the chunked scan must not add to that (gluing
    # chunks through normalised 2x2 transfer-matrix products did: 10-65x the plain loop's error here).
    diag = random_diag(2, 4096, seed=1).float()
    ref = sequential_resolvent(diag, z)
    loop_err = max_rel_err(sequential_resolvent(diag, z, torch.complex64), ref)
    assert max_rel_err(resolvent_diagonal(diag, z), ref) <= 2 * loop_err


@pytest.mark.parametrize("z", Z_VALUES)
@pytest.mark.parametrize("n", [1, 2, 5, 17, 40])
def test_gradcheck(n, z):
    diag = random_diag(2, n, seed=n).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: resolvent_diagonal(d, z), (diag,))


LOSSES = {
    "linear_re_im": lambda g, w: (w[0] * g.real + w[1] * g.imag).sum(),
    "abs_squared": lambda g, w: (g.abs() ** 2 * w[0]).sum(),
}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("z", Z_VALUES)
def test_backward_matches_autograd_through_dense_inverse(loss, z):
    diag = random_diag(2, 512, seed=7).requires_grad_()
    w = torch.randn(2, 2, 512, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (ref,) = torch.autograd.grad(LOSSES[loss](dense_resolvent(diag, z).diagonal(dim1=-2, dim2=-1), w), diag)
    (got,) = torch.autograd.grad(LOSSES[loss](resolvent_diagonal(diag, z), w), diag)
    scale = ref.abs().max()
    assert got.dtype == torch.float64
    assert ((got - ref).abs().max() / scale).item() <= 1e-10
    # The complex64 path: same gradient to single precision.
    diag32 = diag.detach().float().requires_grad_()
    (got32,) = torch.autograd.grad(LOSSES[loss](resolvent_diagonal(diag32, z), w.float()), diag32)
    assert got32.dtype == torch.float32
    assert ((got32.double() - ref).abs().max() / scale).item() <= 1e-4


def seed_blend_reference(G, g):
    """The original project's backward, transcribed from its code: g = dL/dRe G + i dL/dIm G, not conjugated."""
    G2 = G**2
    mag = G2.abs()
    floored = torch.where(mag < 1e-3, G2 / (mag + 1e-9) * 1e-3, G2)
    grad = -0.5 * (g * G2).real - 0.5 * (g / (floored + 1e-6)).real
    return torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad)).clamp(-1000, 1000)


@pytest.mark.parametrize("fn", [resolvent_diagonal, causal_resolvent_diagonal])
def test_seed_blend_hand_value_at_one_position(fn):
    """N = 1, diag = 1 (in the model diag = -2 + v, so v = 3), z = i, L = Im G.

    G = 1/(diag - z) = 1/(1 - i) = (1 + i)/2, so G^2 = (1 + i)^2/4 = i/2. L = Im G gives g = 0 + i·1 = i.
    The seed's backward, g NOT conjugated:
        -0.5 Re(g G^2)        = -0.5 Re(i · i/2)  = -0.5 · (-1/2) = +0.25
        -0.5 Re(g / G^2)      = -0.5 Re(i / (i/2)) = -0.5 · 2     = -1
    (|G^2| = 0.5 is above the 1e-3 floor; the +1e-6 in the divisor moves the result by 4e-12), total -0.75.
    The exact gradient is dIm G/d diag = Im(-G^2) = -0.5. The old kbk heuristic (conj g, no floor) gave
    Re(-i · (0.5(-i/2) + 0.5(-2i))) = -1.25. At N = 1 the causal and bidirectional cores coincide.
    """
    diag = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    fn(diag, 1j, grad="seed_blend").imag.sum().backward()
    assert diag.grad.item() == pytest.approx(-0.75, abs=1e-5)
    assert diag.grad.item() == pytest.approx(0.25 - 0.5 * (1j / (0.5j + 1e-6)).real, abs=1e-14)
    diag.grad = None
    fn(diag, 1j).imag.sum().backward()
    assert diag.grad.item() == pytest.approx(-0.5, abs=1e-12)


@pytest.mark.parametrize("fn", [resolvent_diagonal, causal_resolvent_diagonal])
@pytest.mark.parametrize("z", Z_VALUES)
def test_seed_blend_is_the_seeds_formula_with_its_floor_and_clip(fn, z):
    # diag up to ±60: |G| ~ 1/60, so |G^2| < 1e-3 at some positions and the floor is exercised.
    diag = (120 * torch.rand(2, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 60)
    diag.requires_grad_()
    w = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    G = fn(diag.detach(), z)
    assert (G.square().abs() < 1e-3).any() and (G.square().abs() > 1e-3).any()
    for scale in (1.0, 1e5):  # the large loss scale drives the heuristic into its clip
        ws = scale * w
        (blend,) = torch.autograd.grad(LOSSES["linear_re_im"](fn(diag, z, grad="seed_blend"), ws), diag)
        (exact,) = torch.autograd.grad(LOSSES["linear_re_im"](fn(diag, z), ws), diag)
        torch.testing.assert_close(blend, seed_blend_reference(G, torch.complex(ws[0], ws[1])), rtol=1e-12, atol=0)
        assert blend.abs().max() <= 1000
        assert (blend - exact).abs().max() > 0.1 * exact.abs().max()
    assert (blend.abs() == 1000).any()


def test_seed_blend_sets_non_finite_gradients_to_zero():
    diag = torch.tensor([[1.0, 0.3, -0.7]], dtype=torch.float64, requires_grad=True)
    G = resolvent_diagonal(diag, 1j, grad="seed_blend")
    upstream = torch.tensor([[complex("nan"), 1j, complex(float("inf"), 0)]], dtype=torch.complex128)
    G.backward(upstream)
    assert diag.grad[0, 0].item() == 0.0 and diag.grad[0, 2].item() == 0.0
    assert diag.grad[0, 1].item() == pytest.approx(seed_blend_reference(G.detach(), upstream)[0, 1].item())
    assert diag.grad[0, 1].item() != 0.0


def sequential_ratios(a):
    """Plain loop: u[:, i] = 1 / (a[:, i] - u[:, i-1]), u[:, -1] = 0."""
    u, out = torch.zeros_like(a[:, 0]), []
    for i in range(a.shape[1]):
        u = 1 / (a[:, i] - u)
        out.append(u)
    return torch.stack(out, 1)


def sequential_affine(m, h):
    x, out = torch.zeros_like(h[:, 0]), []
    for j in range(h.shape[1]):
        x = m[:, j] * x + h[:, j]
        out.append(x)
    return torch.stack(out, 1)


def sequential_resolvent(diag, z, dtype=torch.complex128):
    a = diag.to(dtype) - z
    left, right = sequential_ratios(a), sequential_ratios(a.flip(1)).flip(1)
    zero = torch.zeros_like(a[:, :1])
    return 1 / (a - torch.cat([zero, left[:, :-1]], 1) - torch.cat([right[:, 1:], zero], 1))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 31, 32, 33, 100, 1000, 2049, 4097])
def test_scans_equal_sequential_loops_at_every_position(n):
    # Every prefix of each chunked scan against a plain loop, for chunk sizes that do and do not divide n:
    # pins the chunk boundaries, the padding and the shifts of the chunk-combining scan.
    a = random_diag(3, n, seed=n).to(torch.complex128) - (0.5 + 0.3j)
    u_ref = sequential_ratios(a)
    m = torch.cat([torch.zeros_like(u_ref[:, :1]), u_ref[:, :-1]], 1) ** 2
    h = torch.randn(3, n, dtype=torch.complex128, generator=torch.Generator().manual_seed(n))
    x_ref = sequential_affine(m, h)
    for chunk in (1, 2, 3, 8, None, 32, 64):  # None: the default chunk
        torch.testing.assert_close(_ratio_scan(a, chunk), u_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(_affine_scan(m, h, chunk), x_ref, rtol=1e-11, atol=1e-13)


def dense_causal_resolvent(diag, z):
    """Position i: the last diagonal entry of the inverse of the leading (i+1) x (i+1) block, dense."""
    n = diag.shape[-1]
    return torch.stack([dense_resolvent(diag[:, : i + 1], z)[:, i, i] for i in range(n)], -1)


@pytest.mark.parametrize("z", Z_VALUES)
def test_causal_forward_and_backward_match_dense_leading_blocks(z):
    diag = random_diag(2, 70, seed=9).requires_grad_()
    w = torch.randn(2, 2, 70, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = dense_causal_resolvent(diag, z)
    got = causal_resolvent_diagonal(diag, z)
    assert max_rel_err(got, ref) <= 1e-10
    assert max_rel_err(causal_resolvent_diagonal(diag.float(), z), ref) <= 1e-5
    for loss in LOSSES.values():
        (g_ref,) = torch.autograd.grad(loss(ref, w), diag, retain_graph=True)
        (g_got,) = torch.autograd.grad(loss(got, w), diag, retain_graph=True)
        assert ((g_got - g_ref).abs().max() / g_ref.abs().max()).item() <= 1e-10
    assert torch.autograd.gradcheck(
        lambda d: causal_resolvent_diagonal(d, z), (diag[:, :17].detach().requires_grad_(),)
    )


@pytest.mark.parametrize("t", [1, 15, 16, 17, 40])
def test_causal_variant_never_sees_later_positions(t):
    # Bitwise: changing diag[t] leaves every output before t unchanged, and a loss on outputs before t gives
    # exactly zero gradient from t on. (The bidirectional version does see later positions.)
    diag = random_diag(2, 50, seed=3).float()
    changed = diag.clone()
    changed[:, t] += 1.0
    a, b = causal_resolvent_diagonal(diag), causal_resolvent_diagonal(changed)
    assert torch.equal(a[:, :t], b[:, :t]) and not torch.equal(a[:, t], b[:, t])
    assert not torch.equal(resolvent_diagonal(diag)[:, :t], resolvent_diagonal(changed)[:, :t])
    x = diag.requires_grad_()
    (grad,) = torch.autograd.grad(causal_resolvent_diagonal(x)[:, :t].abs().sum(), x)
    assert torch.equal(grad[:, t:], torch.zeros_like(grad[:, t:])) and (grad[:, :t] != 0).all()


def test_rows_are_independent_and_leading_dims_are_kept():
    diag = random_diag(5, 300, seed=2).float().requires_grad_()
    w = torch.randn(5, 300)
    g = resolvent_diagonal(diag, 1j)
    (grad,) = torch.autograd.grad((g.abs() ** 2 * w).sum(), diag)
    for r in range(5):
        row = diag[r : r + 1].detach().requires_grad_()
        g_row = resolvent_diagonal(row, 1j)
        (grad_row,) = torch.autograd.grad((g_row.abs() ** 2 * w[r]).sum(), row)
        torch.testing.assert_close(g_row[0], g[r], rtol=1e-6, atol=0)
        torch.testing.assert_close(grad_row[0], grad[r], rtol=1e-5, atol=1e-6)
    g3 = resolvent_diagonal(diag.detach().reshape(5, 1, 300).expand(5, 2, 300), 1j)
    assert g3.shape == (5, 2, 300)
    torch.testing.assert_close(g3[:, 1], g, rtol=1e-6, atol=0)


def test_invalid_arguments_raise_value_error():
    diag = torch.zeros(2, 4)
    for z in (1.0, -1j, 0.5 + 0j, 1 - 0.1j):
        with pytest.raises(ValueError, match="Im z > 0"):
            resolvent_diagonal(diag, z)
    with pytest.raises(ValueError, match="grad"):
        resolvent_diagonal(diag, 1j, grad="approx")
    with pytest.raises(ValueError, match="dtype"):
        resolvent_diagonal(diag, 1j, dtype=torch.float64)
    with pytest.raises(ValueError, match="real"):
        resolvent_diagonal(diag.to(torch.complex64), 1j)
    with pytest.raises(ValueError, match="N >= 1"):
        resolvent_diagonal(torch.zeros(2, 0), 1j)
    with pytest.raises(ValueError, match="Im z > 0"):
        causal_resolvent_diagonal(diag, 2.0)
