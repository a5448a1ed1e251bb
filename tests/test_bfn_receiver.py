"""The discretised receiver's fast paths (suite/bfn/mixture.py, dgauss.bin_mean) against the definitions.

The receiver ln sum_k p_O(k) N(y | k_c, 1/alpha) (MATH.md s.4) is computed one of three ways per element:
a closed form by Poisson summation, a window of bins, or all K bins; each shortcut is taken only where a
rigorous bound says what it leaves out is below TOL. These tests check every path against the full
(S, N, K) definition in float64, and show with the bounds switched off that the bounds are what keep the
shortcuts exact (negative controls). Likewise for k-hat = sum_k p(k) k_c (MATH.md s.4, L^inf).
"""

import math

import pytest
import torch

import suite.bfn.dgauss as dgauss
import suite.bfn.mixture as mixture
from suite.bfn.discretised import DiscretisedBFN
from suite.bfn.mixture import ANALYTIC, FULL, WINDOW, mixture_lse, mixture_lse_fixed, mixture_lse_reference
from suite.bfn.testing import TinyNet
from suite.data.base import DataSpec
from tests.helpers.dgauss import BACKENDS, assert_routes_exact, bin_mean_cases, bin_mean_errors, use_backend

K = 256


def _inputs(N, S, seed, dtype=torch.float64):
    """Pixels near bin centres of [-1, 1] with network-like (mu, sigma): a tenth of the means anywhere in
    [-2, 2], sigma log-uniform in [1e-3, 10], alpha log-uniform in [1, e^16] (n-step accuracies), y from the
    sender (so often outside [-1, 1] when alpha is small)."""
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randint(0, K, (N,), generator=g) + 1).to(dtype) / K - 1
    mu = x + 0.3 * torch.randn(N, generator=g, dtype=dtype) * torch.rand(N, generator=g, dtype=dtype)
    mu[: N // 10] = torch.rand(N // 10, generator=g, dtype=dtype) * 4 - 2
    sigma = 1e-3 * torch.exp(torch.rand(N, generator=g, dtype=dtype) * math.log(1e4))
    alpha = torch.exp(torch.rand(N, generator=g, dtype=dtype) * 16)
    y = x + torch.randn(S, N, generator=g, dtype=dtype) / alpha.sqrt()
    return mu, sigma, alpha, y


def _value_and_grads(fn, mu, sigma, alpha, y):
    m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
    out = fn(m, s, alpha, y, K)
    return (out.detach(), *torch.autograd.grad(out.sum(), [m, s]))


@pytest.mark.parametrize("S", [1, 3])
def test_every_receiver_path_equals_the_definition(S):
    """Each path (closed form, window, all bins) gives mean_s LSE_k(ln p_O(k) - alpha (y_s - k_c)^2 / 2) and its
    d/d(mu, sigma) as autograd through the (S, N, K) definition does (MATH.md s.4): float64 to 1e-10 of the
    value and 1e-9 / sigma of the gradients; float32 to float32 rounding of the inputs and of a K-term sum."""
    mu, sigma, alpha, y = _inputs(4000, S, seed=S)
    paths = mixture.receiver_paths(mu, sigma, alpha, y, K)
    counts = torch.bincount(paths.long(), minlength=3)
    assert all(int(c) > 100 for c in counts), counts  # every path is exercised
    ref, ref_mu, ref_sigma = _value_and_grads(mixture_lse_reference, mu, sigma, alpha, y)
    got, g_mu, g_sigma = _value_and_grads(mixture_lse, mu, sigma, alpha, y)
    for code in (ANALYTIC, WINDOW, FULL):
        sel = paths == code
        torch.testing.assert_close(got[sel], ref[sel], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close((g_mu * sigma)[sel], (ref_mu * sigma)[sel], rtol=0, atol=1e-9)
        torch.testing.assert_close((g_sigma * sigma)[sel], (ref_sigma * sigma)[sel], rtol=0, atol=1e-9)
    # float32: against the definition at the float32-rounded inputs
    m32, s32, a32, y32 = (v.float() for v in (mu, sigma, alpha, y))
    ref32 = mixture_lse_reference(*(v.double() for v in (m32, s32, a32, y32)), K)
    got32 = mixture_lse(m32, s32, a32, y32, K).double()
    sane = (ref32.abs() < 1e4) & ((mu - y.mean(0)).abs() < 8 * (sigma + alpha.rsqrt()))
    torch.testing.assert_close(got32[sane], ref32[sane], rtol=2e-5, atol=1e-5)


def test_the_bounds_are_what_keep_the_shortcuts_exact(monkeypatch):
    """Negative controls. With TOL raised so that every bound passes, the closed form and the windows are taken
    wherever they are tried and the receiver moves far from the definition (the end bins and the bins outside
    the windows do matter); with windows far too narrow (C = 0.5), the bound sends those rows to the full sum
    and the receiver stays exact."""
    mu, sigma, alpha, y = _inputs(3000, 1, seed=7)
    ref = mixture_lse_reference(mu, sigma, alpha, y, K)
    assert (mixture_lse(mu, sigma, alpha, y, K) - ref).abs().max() < 1e-9
    full_before = int((mixture.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())

    with monkeypatch.context() as mp:
        mp.setitem(mixture.TOL, torch.float64, 1e300)
        loose = mixture_lse(mu, sigma, alpha, y, K)
        full_loose = int((mixture.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())
    assert full_loose < full_before // 2  # only rows whose window is all K bins anyway remain
    assert (loose - ref).abs().max() > 1e-2
    with monkeypatch.context() as mp:
        mp.setitem(mixture.WINDOW_C, torch.float64, 0.5)
        mp.setattr(mixture, "ANALYTIC_MIN_BINS", 10**9)  # windows only: the bound alone must catch them
        narrow = mixture_lse(mu, sigma, alpha, y, K)
        full_after = int((mixture.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())
    assert full_after > full_before + 500
    torch.testing.assert_close(narrow, ref, rtol=1e-10, atol=1e-10)


def test_closed_form_needs_the_end_bins_near_the_ends():
    """The Poisson-summation closed form is the sum over an infinite lattice; near an end, where p_O's tail
    is clipped into the end bin and the kernel is wide, it differs from the receiver (MATH.md s.4). Those
    elements must fail the closed form's bound; away from the ends it agrees to 1e-12."""
    n = 200
    mu = torch.full((n,), -0.95, dtype=torch.float64)
    sigma = torch.full((n,), 0.2, dtype=torch.float64)
    alpha = torch.full((n,), 30.0, dtype=torch.float64)
    y = torch.linspace(-1.2, 0.9, n, dtype=torch.float64)[None]
    ok, lam, _, _ = mixture._analytic(mu, sigma, alpha, y, K, mixture.TOL[torch.float64])
    ref = mixture_lse_reference(mu, sigma, alpha, y, K)
    near = (lam - ref).abs() > 1e-6
    assert int(near.sum()) > 50 and not bool((ok & near).any())
    centre = torch.zeros(n, dtype=torch.float64)
    y_c = torch.linspace(-0.2, 0.2, n, dtype=torch.float64)[None]
    ok_c, lam_c, _, _ = mixture._analytic(centre, sigma * 0.5, alpha * 10, y_c, K, mixture.TOL[torch.float64])
    assert bool(ok_c.all())
    torch.testing.assert_close(lam_c, mixture_lse_reference(centre, sigma * 0.5, alpha * 10, y_c, K), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_output_receiver_equals_the_definition(dtype):
    """mixture_lse_fixed (one p_O for all elements: the prior N(0, 1) at t = 0) equals the definition with
    (mu, sigma) = (0, 1) (MATH.md s.4), for 2 sender samples."""
    _, _, alpha, y = _inputs(2000, 2, seed=11)
    zero = torch.zeros(2000, dtype=torch.float64)
    logp = dgauss.bin_probs(zero[:1], zero[:1] + 1.0, K)[0].log()
    ref = mixture_lse_reference(zero, zero + 1.0, alpha, y, K)
    got = mixture_lse_fixed(logp, alpha.to(dtype), y.to(dtype)).double()
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-4, 1e-5)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def test_nstep_loss_gradients_equal_autograd_through_the_definition(monkeypatch):
    """L^n (MATH.md s.4) with prior rows (i = 1), late and early steps in one batch: the network's gradient
    through the fused, windowed and closed-form receiver equals autograd through the (S, N, K) definition."""
    shape = (4, 5)
    spec = DataSpec("img", "discretised", shape, K)
    g = torch.Generator().manual_seed(5)
    x = (2 * torch.randint(0, K, (6, *shape), generator=g) + 1).float() / K - 1
    noise, y_noise = torch.randn(6, *shape, generator=g), torch.randn(2, 6, *shape, generator=g)
    i, n = torch.tensor([1, 2, 4, 6, 9, 10]), 10

    def grads(model):
        model.zero_grad()
        loss = model.loss_nstep(x, i, n, noise, y_noise)
        loss.sum().backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    model = DiscretisedBFN(spec, TinyNet(shape, 1, 2, seed=0), sigma1=1e-3)
    loss, fused = grads(model)
    paths = set()
    real_paths = mixture.receiver_paths

    def spy(mu, sigma, alpha, y, K_, chunk):  # record the paths, then compute by the definition
        paths.update(real_paths(mu.detach(), sigma.detach(), alpha, y, K_).tolist())
        return mixture_lse_reference(mu, sigma, alpha, y, K_)

    import suite.bfn.discretised as discretised

    monkeypatch.setattr(discretised, "mixture_lse", spy)
    monkeypatch.setattr(
        discretised, "mixture_lse_fixed",
        lambda logp, alpha, y: mixture_lse_reference(torch.zeros_like(alpha), torch.ones_like(alpha), alpha, y, K),
    )  # fmt: skip
    loss_ref, ref = grads(model)
    assert paths == {ANALYTIC, WINDOW, FULL}
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _bin_mean_routes(mu, sigma, K_=K):
    """The rows of each bin_mean route (suite/bfn/dgauss.py): Euler-Maclaurin ends, the narrow windows, the wider
    windows (aliasing or an end near), and k-hat = mu."""
    h = 2.0 / K_
    s = sigma / h
    near = (mu.abs() + dgauss.Z_FAR * sigma) > 1
    em = s >= dgauss.S_EM
    narrow = s < dgauss.S_NARROW
    window = ~em & ~narrow & (near | (s < dgauss.S_ALIAS))
    return {"em": em, "narrow": narrow, "window": window, "mu": ~em & ~narrow & ~window}


def test_bin_mean_routes_equal_the_direct_sum(monkeypatch):
    """k-hat = sum_k p(k) k_c and its derivatives (MATH.md s.4) on each of bin_mean's routes, float64: within
    BIN_MEAN_TOL (1e-9 values, 1e-8 derivatives) of autograd through the O(K) sum. The torch routes (every
    device; tests/test_bfn_dgauss_cpu.py has the CPU kernel's)."""
    use_backend(monkeypatch, "torch")
    mu, sigma = bin_mean_cases()
    assert_routes_exact(mu, sigma, _bin_mean_routes(mu, sigma), K)


def test_bin_mean_bounds_bound_what_they_leave_out():
    """Each bound in dgauss against the quantity it bounds, computed directly, and below BIN_MEAN_TOL at the
    thresholds bin_mean uses: the lattice's aliasing (the Fourier series A, summed to m = 40), the edges
    beyond a window (summed to 400 edges) and a far end's clipped edges."""
    h = 2.0 / K
    tol_v, tol_g = dgauss.BIN_MEAN_TOL
    Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    for s in (0.25, 0.4, 0.6, 0.8, dgauss.S_ALIAS, 1.5):
        q = math.exp(-2 * math.pi**2 * s * s)
        for u in (0.1, 0.37, 0.8):
            A = [
                abs(sum(h / math.pi * q ** (m * m) * math.sin(2 * math.pi * m * u) / m for m in range(1, 40))),
                abs(sum(2 * q ** (m * m) * math.cos(2 * math.pi * m * u) for m in range(1, 40))),
                abs(sum(4 * math.pi * s * m * q ** (m * m) * math.sin(2 * math.pi * m * u) for m in range(1, 40))),
            ]
            assert all(a <= b for a, b in zip(A, dgauss.alias_bound(s, h), strict=True))
            for M in (1, 2, 5):  # the terms after the first M (what a truncated series leaves out)
                tail = [
                    abs(sum(h / math.pi * q ** (m * m) * math.sin(2 * math.pi * m * u) / m for m in range(M + 1, 40))),
                    abs(sum(2 * q ** (m * m) * math.cos(2 * math.pi * m * u) for m in range(M + 1, 40))),
                    abs(sum(4 * math.pi * s * m * q ** (m * m) * math.sin(2 * math.pi * m * u) for m in range(M + 1, 40))),
                ]  # fmt: skip
                assert all(a <= b for a, b in zip(tail, dgauss.alias_bound(s, h, M), strict=True))
    assert all(b < t for b, t in zip(dgauss.alias_bound(dgauss.S_ALIAS, h), (tol_v, tol_g, tol_g), strict=True))
    for s in (0.05, 0.3, 1.0, dgauss.S_EM):
        for c in (1.5, 3.0, dgauss.WINDOW_Z):
            z = [c + i / s for i in range(400)]  # one side's omitted edges, nearest first
            rest = [h * 2 * sum(Phi(-w) for w in z), 2 / s * sum(phi(w) for w in z), 2 / s * sum(w * phi(w) for w in z)]
            assert all(r <= b for r, b in zip(rest, dgauss.window_bound(c, s, h), strict=True))
            if c == dgauss.WINDOW_Z:
                assert all(b < t for b, t in zip(dgauss.window_bound(c, s, h), (tol_v, tol_g, tol_g), strict=True))
    for s in (dgauss.S_NARROW, 1.0, dgauss.S_EM, 50.0):
        for z0 in (-1.0, -3.0, -dgauss.Z_FAR):
            z = [z0 - i / s for i in range(20000)]
            rest = [h * sum(Phi(w) for w in z), 1 / s * sum(phi(w) for w in z), 1 / s * sum(abs(w) * phi(w) for w in z)]
            assert all(r <= b for r, b in zip(rest, dgauss.far_end_bound(z0, s, h), strict=True))
    assert all(b < t for b, t in zip(dgauss.far_end_bound(-dgauss.Z_FAR, dgauss.S_EM, h), (tol_v, tol_g, tol_g), strict=True))


@pytest.mark.parametrize(
    "name, value, route", [("S_ALIAS", 0.6, "window"), ("Z_FAR", 2.0, "window"), ("WINDOW_Z", 2.0, "narrow")]
)
def test_bin_mean_thresholds_are_what_keep_it_exact(monkeypatch, name, value, route):
    """Negative controls: with a threshold loosened past what its bound allows, bin_mean leaves out terms that
    matter (MATH.md s.4): k-hat = mu for kernels 0.6 bins wide, where the lattice's aliasing is ~1e-3 of a bin;
    ends 2 sigma away treated as far; windows 2 sigma wide. The error then exceeds BIN_MEAN_TOL by orders of
    magnitude on that route's rows. The torch routes (tests/test_bfn_dgauss_cpu.py has the CPU kernel's)."""
    use_backend(monkeypatch, "torch")
    mu, sigma = bin_mean_cases()
    rows = _bin_mean_routes(mu, sigma)[route]
    assert max(float(e[rows].max()) for e in bin_mean_errors(mu, sigma, K)) < dgauss.BIN_MEAN_TOL[1]
    monkeypatch.setattr(dgauss, name, value)
    err = bin_mean_errors(mu, sigma, K)
    assert max(float(e[rows].max()) for e in err) > 1e3 * dgauss.BIN_MEAN_TOL[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bin_mean_edge_inputs(monkeypatch, backend):
    """No elements; broadcast mu and sigma (gradients reduced to each input's shape); and a kernel so wide (sigma =
    1e5) that its lower end, exactly Z_FAR sigma away, still moves k-hat by ~1e-8 (the s_far rule: the far-end
    bound grows with sigma), against the O(K) sum, with the rule switched off as a negative control."""
    use_backend(monkeypatch, backend)
    assert dgauss.bin_mean(torch.zeros(0), torch.ones(0), K).shape == (0,)
    mu = torch.tensor([[0.1], [-0.7]], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.002, 0.05, 3.0], dtype=torch.float64, requires_grad=True)
    fast = dgauss.bin_mean(mu, sigma, K)
    direct = dgauss.bin_mean_sum(*torch.broadcast_tensors(mu, sigma), K)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-9)
    gf, gd = (torch.autograd.grad(v.sum(), [mu, sigma]) for v in (fast, direct))
    for a, b, like in zip(gf, gd, (mu, sigma), strict=True):
        assert a.shape == like.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    wide_sigma = torch.tensor([1e5], dtype=torch.float64)
    wide_mu = dgauss.Z_FAR * wide_sigma - 1.0  # the lower end's edge at z = -Z_FAR: not "near"
    direct = dgauss.bin_mean_sum(wide_mu, wide_sigma, K)
    assert float((dgauss.bin_mean(wide_mu, wide_sigma, K) - direct).abs()) < dgauss.BIN_MEAN_TOL[0]
    monkeypatch.setattr(dgauss, "BIN_MEAN_TOL", (1.0, 1.0))  # s_far -> 1e11: the far end is dropped
    assert float((dgauss.bin_mean(wide_mu, wide_sigma, K) - direct).abs()) > 5 * 1e-9
