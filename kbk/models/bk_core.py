"""BK-Core: the diagonal of a tridiagonal resolvent, exact, O(N), batched, with an exact custom backward.

For the Hamiltonian ``H`` with diagonal ``diag`` (in the model ``-2 + v``) and all off-diagonals 1, and a
shift ``z`` with ``Im z > 0``, the BK-Core returns ``G_ii = [(H - zI)^{-1}]_ii`` for every row of a batch
(``resolvent_diagonal``), or the causal variant ``[(H[:i+1, :i+1] - zI)^{-1}]_ii`` = ``left[i]`` below
(``causal_resolvent_diagonal``), which depends on positions <= i only.

Maths (docs/bk-core.md). Write ``T = H - zI`` with diagonal ``a_i = diag_i - z`` and let
``θ_i`` be its leading principal minors and ``φ_i`` its trailing ones. They grow exponentially with N, so only
their ratios are ever formed (0-based indices from here on):

    left[i]  = det T[:i]   / det T[:i+1]  = 1 / (a_i - left[i-1]),    left[-1] = 0
    right[i] = det T[i+1:] / det T[i:]    = 1 / (a_i - right[i+1]),   right[N] = 0
    G_ii     = 1 / (a_i - left[i-1] - right[i+1])

With ``Im z > 0`` every ``left``/``right`` lies in the upper half plane with modulus <= 1/Im z, each step is
a contraction, ``Im(a_i - left - right) <= -Im z`` (so the last division never cancels) and
``|G_ii| <= 1/Im z``: no clamping or regularisation is needed. ``right`` is the same recurrence run on the
reversed row, so both are one scan over ``2B`` rows.

Exact gradient: ``dG_ii/d diag_j = -G_ij G_ji = -G_ij^2`` (T is complex-symmetric). With
``g_i = dL/dRe G_ii + i dL/dIm G_ii`` (the grad_output PyTorch hands a complex output),

    dL/d diag_j = -Re Σ_i conj(g_i) G_ij^2 = -Re[ G_jj^2 (A_j + C_j - conj g_j) ]
    A_j = conj g_j + left[j-1]^2  A_{j-1}      (= Σ_{i<=j} conj g_i (G_ij/G_jj)^2, since G_ij/G_jj = ±Π left)
    C_j = conj g_j + right[j+1]^2 C_{j+1}      (the suffix twin)

Both are affine recurrences ``X_j = m_j X_{j-1} + h_j`` whose terms are bounded (``|G_ij| <= 1/Im z`` and
``|G_jj| >= 1/(|a_j| + 2/Im z)``), so they are carried unscaled; the suffix one is again the prefix one on
reversed rows.

Speed: a Python loop over N positions is too slow, so every recurrence is a chunked scan: split the row into
chunks of ``_CHUNK`` positions; (1) run all chunks at once, a loop over the position inside the chunk, to get
each chunk's composed map; (2) combine the chunk maps with a log-depth Hillis-Steele scan to get every chunk's
incoming value; (3) rerun the recurrence inside all chunks from their incoming values. Steps (1) and (3) are
O(N) work, step (2) O((N/_CHUNK) log(N/_CHUNK)) on tensors _CHUNK times smaller; Python runs a few loops
of ``_CHUNK`` steps plus ``log2(N / _CHUNK)`` scan steps, each a few vectorised ops over the whole batch.
Step (3) is exactly the sequential recurrence, so the result matches a plain loop to rounding, also in
complex64 near the real axis. ``experiments/benchmarks/bk_core.py`` compares this with a full-length
Hillis-Steele scan (about 2x slower at N = 4096, ~N log N work), plain loops, and other chunk sizes (8 to 32
are within noise of each other; 16 is the compromise between short and long rows).
"""

from __future__ import annotations

import torch

__all__ = ["causal_resolvent_diagonal", "resolvent_diagonal"]

# Positions per chunk of the chunked scans (see the module docstring; chosen by measurement).
_CHUNK = 16
# The seed's heuristic backward: |G^2| floored at this before dividing by it, this added to the divisor, and
# the result clipped to this magnitude (its constants, kept as they were).
_SEED_BLEND_FLOOR = 1e-3
_SEED_BLEND_EPS = 1e-6
_SEED_BLEND_CLIP = 1000.0


def resolvent_diagonal(
    diag: torch.Tensor, z: complex = 1j, grad: str = "exact", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Diagonal of ``(H - zI)^{-1}`` for the tridiagonal ``H`` with diagonal ``diag`` and unit off-diagonals.

    Args:
        diag: real tensor ``(B, N)`` (any leading shape ``(..., N)`` works), the diagonal of ``H``.
        z: complex shift, ``Im z > 0`` (off the real axis the resolvent always exists).
        grad: backward used for ``diag``:
            ``"exact"`` (default): the true gradient ``dL/d diag_j = -Re Σ_i conj(g_i) G_ij^2`` in O(N), where
            ``g_i = dL/dRe G_ii + i dL/dIm G_ii``.
            ``"seed_blend"``: the original project's heuristic backward, reproduced exactly for comparison. It
            ignores every off-diagonal term ``i != j`` and, with ``g_i`` as above (NOT conjugated), computes
            ``grad_i = -0.5 Re(g_i G_ii^2) - 0.5 Re(g_i / (G̃_ii^2 + 1e-6))``, where ``G̃^2`` is ``G^2``
            with its magnitude floored at 1e-3 (phase kept), then sets NaN/Inf to 0 and clips to ±1000. The
            first half is the diagonal term of the exact gradient without its conjugation, the second the
            seed's "hypothesis-7" ``-g / G^2``; it is neither the gradient nor a descent direction in general
            (N = 1, diag = 1, z = i, L = Im G: -0.75 where the exact gradient is -0.5).
        dtype: ``torch.complex64`` or ``torch.complex128`` to compute and return in; default complex128 for
            float64 input, complex64 otherwise.

    Returns:
        complex tensor of ``diag``'s shape: ``G_ii`` for every row.
    """
    return _apply(diag, z, grad, dtype, causal=False)


def causal_resolvent_diagonal(
    diag: torch.Tensor, z: complex = 1j, grad: str = "exact", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Causal BK-Core: ``[(H[:i+1, :i+1] - zI)^{-1}]_ii`` at position i, a function of ``diag[:i+1]`` only.

    The leading block ends at i, so this is ``θ_{i-1}/θ_i = left[i]``: the left-to-right continued fraction
    alone (the bidirectional :func:`resolvent_diagonal` lets position i see every later position). Same
    arguments and dtypes as :func:`resolvent_diagonal`. The exact gradient is
    ``dL/d diag_j = -Re Σ_{i>=j} conj(g_i) (G^(i)_ij)^2`` with ``G^(i)_ij = ±Π_{k=j..i} left[k]``, one
    suffix sum; ``"seed_blend"`` applies the same per-position heuristic as :func:`resolvent_diagonal` to
    these values.
    """
    return _apply(diag, z, grad, dtype, causal=True)


def _apply(diag, z, grad, dtype, causal):
    z = complex(z)
    if not z.imag > 0:
        raise ValueError(
            f"the BK-Core needs Im z > 0 (the resolvent may not exist on the real axis); got z={z}"
        )
    if diag.is_complex() or not diag.is_floating_point():
        raise ValueError(f"the BK-Core needs a real floating-point diag; got {diag.dtype}")
    if diag.dim() < 1 or diag.shape[-1] == 0:
        raise ValueError(f"the BK-Core needs diag of shape (..., N) with N >= 1; got {tuple(diag.shape)}")
    if dtype is None:
        dtype = torch.complex128 if diag.dtype == torch.float64 else torch.complex64
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128; got {dtype}")
    if grad == "exact":
        fn = _ExactResolventDiagonal
    elif grad == "seed_blend":
        fn = _SeedBlendResolventDiagonal
    else:
        raise ValueError(f"grad must be 'exact' or 'seed_blend'; got {grad!r}")
    shape = diag.shape
    return fn.apply(diag.reshape(-1, shape[-1]), z, dtype, causal).reshape(shape)


def _forward(diag, z, dtype, causal) -> tuple[torch.Tensor, torch.Tensor]:
    """G (B, N) and the ratios the backward needs: left (B, N) if causal, else (2B, N) with rows [:B] left[i]
    and rows [B:] right[N-1-i]."""
    a = diag.to(dtype) - z
    if causal:
        left = _ratio_scan(a)
        return left, left
    ratios = _ratio_scan(torch.cat([a, a.flip(-1)]))
    b = a.shape[0]
    left, right = ratios[:b], ratios[b:].flip(-1)
    # G_i = 1 / (a_i - left[i-1] - right[i+1]), with left[-1] = right[N] = 0.
    denom = a.clone()
    denom[:, 1:] -= left[:, :-1]
    denom[:, :-1] -= right[:, 1:]
    return torch.reciprocal(denom), ratios


def _shifted_squares(ratios: torch.Tensor) -> torch.Tensor:
    """m[:, j] = ratios[:, j-1]^2, m[:, 0] = 0: the multipliers of the gradient's affine recurrences."""
    m = torch.zeros_like(ratios)
    m[:, 1:] = ratios[:, :-1].square()
    return m


class _ExactResolventDiagonal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, diag, z, dtype, causal):
        G, ratios = _forward(diag, z, dtype, causal)
        ctx.save_for_backward(G, ratios)
        ctx.real_dtype, ctx.causal = diag.dtype, causal
        return G

    @staticmethod
    def backward(ctx, grad_G):
        G, ratios = ctx.saved_tensors
        h = grad_G.to(G.dtype).conj()
        if ctx.causal:
            # Y_j = conj g_j + left[j+1]^2 Y_{j+1} (= Σ_{i>=j} conj g_i (G^(i)_ij / left[j])^2), run reversed.
            total = _affine_scan(_shifted_squares(ratios.flip(-1)), h.flip(-1)).flip(-1)
        else:
            # Prefix sums A on rows [:B], suffix sums C (reversed) on rows [B:]: one affine scan, the same
            # multipliers ratios[j-1]^2 on both halves.
            b = G.shape[0]
            sums = _affine_scan(_shifted_squares(ratios), torch.cat([h, h.flip(-1)]))
            total = sums[:b] + sums[b:].flip(-1) - h  # Σ_i conj(g_i) (G_ij / G_jj)^2
        grad_diag = -(G.square() * total).real
        return grad_diag.to(ctx.real_dtype), None, None, None


class _SeedBlendResolventDiagonal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, diag, z, dtype, causal):
        G, _ = _forward(diag, z, dtype, causal)
        ctx.save_for_backward(G)
        ctx.real_dtype = diag.dtype
        return G

    @staticmethod
    def backward(ctx, grad_G):
        (G,) = ctx.saved_tensors
        g = grad_G.to(G.dtype)  # dL/dRe G + i dL/dIm G; the seed did not conjugate it
        G2 = G.square()
        mag = G2.abs()
        # The seed's floor: phase kept, magnitude raised to the floor (its +1e-9 guards a zero G^2).
        floored = torch.where(mag < _SEED_BLEND_FLOOR, G2 / (mag + 1e-9) * _SEED_BLEND_FLOOR, G2)
        grad_diag = -0.5 * (g * G2).real - 0.5 * (g / (floored + _SEED_BLEND_EPS)).real
        grad_diag = torch.nan_to_num(grad_diag, nan=0.0, posinf=0.0, neginf=0.0)
        grad_diag = grad_diag.clamp(-_SEED_BLEND_CLIP, _SEED_BLEND_CLIP)
        return grad_diag.to(ctx.real_dtype), None, None, None


# ------------------------------------------------------------------------------------------------------------
# Chunked scans. Both take rows (R, N) and return (R, N); the recurrence runs along the last dimension.


def _to_chunks(x: torch.Tensor, chunk: int, fill: complex) -> torch.Tensor:
    """(R, N) -> (chunk, R, K): padded at the end with `fill` (later positions never affect earlier ones);
    position-in-chunk first so the loop over it reads contiguous (R, K) slices."""
    r, n = x.shape
    k = -(-n // chunk)
    if k * chunk != n:
        x = torch.cat([x, x.new_full((r, k * chunk - n), fill)], 1)
    return x.view(r, k, chunk).permute(2, 0, 1).contiguous()


def _from_chunks(xs: list[torch.Tensor], n: int) -> torch.Tensor:
    """List of `chunk` tensors (R, K) -> (R, N)."""
    x = torch.stack(xs, -1)
    return x.flatten(1)[:, :n]


def _ratio_scan(a: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """u[:, i] = 1 / (a[:, i] - u[:, i-1]) with u[:, -1] = 0, for complex a with Im a < 0."""
    n = a.shape[1]
    chunk = min(chunk or _CHUNK, n)
    # Padding with a = -i keeps Im a < 0, so the padded tail stays well defined.
    at = _to_chunks(a, chunk, -1j)
    # (1) Each chunk's map u_in -> u_out (u at its last position) is the Möbius map
    # u -> p + r u / (1 + q u), with p = G_c[-1, -1], q = -G_c[0, 0], r = G_c[0, -1]^2 for G_c the resolvent
    # of the chunk's own matrix. Each is bounded by 1/Im z (or its square) and comes from a stable recurrence:
    # p from the left, q from the right, and G_c[0, -1] = ±1/det = ±(product of the left ratios).
    # (A product of 2x2 transfer matrices gives the same map, but its normalised coefficients lose precision
    # to cancellation near the real axis: up to ~60x the plain loop's complex64 error at Im z = 0.01.)
    p = torch.zeros_like(at[0])
    r = torch.ones_like(p)
    for ac in at:
        p = torch.reciprocal(ac - p)
        r = r * p
    q = torch.zeros_like(p)
    for ac in reversed(at):
        q = torch.reciprocal(ac - q)
    # (2) Incoming value of every chunk: exclusive scan of the chunk maps.
    u = _mobius_exclusive_scan(p, -q, r.square())
    # (3) The recurrence itself inside every chunk, started from the right incoming value.
    out = []
    for ac in at:
        u = torch.reciprocal(ac - u)
        out.append(u)
    return _from_chunks(out, n)


def _mobius_exclusive_scan(p: torch.Tensor, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Maps F_k(u) = p_k + r_k u / (1 + q_k u) along dim 1 -> (F_{k-1} ∘ ... ∘ F_0)(0) for every k.

    Hillis-Steele: after the step with shift s, slot k holds F_k ∘ ... ∘ F_{k-2s+1}. For chunk maps
    (p, q, r) = (G[-1, -1], -G[0, 0], G[0, -1]^2), gluing chunk A before chunk B gives, with
    e = 1 / (1 + q_B p_A) (never infinite: 1 + q_B p_A is B's denominator at a point of the upper half
    plane): p = p_B + r_B p_A e, q = q_A + r_A q_B e, r = r_A r_B e^2, the same form for the longer chunk."""
    s = 1
    while s < p.shape[1]:
        pa, qa, ra = p[:, :-s], q[:, :-s], r[:, :-s]  # earlier
        pb, qb, rb = p[:, s:], q[:, s:], r[:, s:]  # later
        e = torch.reciprocal(torch.addcmul(torch.ones_like(pb), qb, pa))
        new_p = torch.addcmul(pb, rb, pa * e)
        new_q = torch.addcmul(qa, ra, qb * e)
        new_r = ra * rb * e.square()
        p = torch.cat([p[:, :s], new_p], 1)
        q = torch.cat([q[:, :s], new_q], 1)
        r = torch.cat([r[:, :s], new_r], 1)
        s *= 2
    return torch.cat([torch.zeros_like(p[:, :1]), p[:, :-1]], 1)  # F(0) = p


def _affine_scan(m: torch.Tensor, h: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """x[:, j] = m[:, j] * x[:, j-1] + h[:, j] with x[:, -1] = 0."""
    n = m.shape[1]
    chunk = min(chunk or _CHUNK, n)
    mt, ht = _to_chunks(m, chunk, 0), _to_chunks(h, chunk, 0)
    # (1) Each chunk's map x_in -> x_end is x_in * M + X: M the product of its m, X its recurrence from 0.
    # Products of m are ratios (G_ij / G_jj)^2, bounded, so they need no rescaling.
    big_m = torch.ones_like(mt[0])
    x = torch.zeros_like(big_m)
    for mc, hc in zip(mt, ht, strict=True):
        x = torch.addcmul(hc, mc, x)
        big_m = big_m * mc
    # (2) Incoming value of every chunk: exclusive Hillis-Steele scan of the affine maps.
    s = 1
    while s < x.shape[1]:
        x = torch.cat([x[:, :s], torch.addcmul(x[:, s:], big_m[:, s:], x[:, :-s])], 1)
        big_m = torch.cat([big_m[:, :s], big_m[:, s:] * big_m[:, :-s]], 1)
        s *= 2
    x = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    # (3) The recurrence inside every chunk from its incoming value.
    out = []
    for mc, hc in zip(mt, ht, strict=True):
        x = torch.addcmul(hc, mc, x)
        out.append(x)
    return _from_chunks(out, n)
