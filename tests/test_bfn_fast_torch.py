"""The accelerations in suite/bfn/fast/ that run on every device, against the references in suite/bfn/discretised.py.

The receiver ln sum_k p_O(k) N(y | k_c, 1/alpha) (MATH.md s.4) is computed by fast.receiver one of three ways per
element: a closed form by Poisson summation, a window of bins, or all K bins; each shortcut is taken only where a
rigorous bound says what it leaves out is below TOL. These tests check every path against the O(K) reference
(`receiver_lse_reference`) in float64, and show with the bounds switched off that the bounds are what keep the
shortcuts exact (negative controls). Likewise for k-hat = sum_k p(k) k_c (MATH.md s.4, L^inf) by fast.khat_torch,
against the literal sum through the bin masses (dgauss.bin_mean_sum); and the dispatch itself.
"""

import math

import pytest
import torch

import suite.bfn.dgauss as dgauss
import suite.bfn.discretised as discretised
from suite.bfn import fast
from suite.bfn.discretised import DiscretisedBFN, k_hat_reference, receiver_lse_reference
from suite.bfn.fast import bounds, khat_numba, khat_torch, receiver
from suite.bfn.fast.receiver import ANALYTIC, FULL, WINDOW, mixture_lse, mixture_lse_fixed
from suite.bfn.testing import TinyNet
from suite.data.base import DataSpec
from tests.helpers.khat import BACKENDS, assert_routes_exact, bin_mean_cases, bin_mean_errors, use_backend

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
    paths = receiver.receiver_paths(mu, sigma, alpha, y, K)
    counts = torch.bincount(paths.long(), minlength=3)
    assert all(int(c) > 100 for c in counts), counts  # every path is exercised
    ref, ref_mu, ref_sigma = _value_and_grads(receiver_lse_reference, mu, sigma, alpha, y)
    got, g_mu, g_sigma = _value_and_grads(mixture_lse, mu, sigma, alpha, y)
    for code in (ANALYTIC, WINDOW, FULL):
        sel = paths == code
        torch.testing.assert_close(got[sel], ref[sel], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close((g_mu * sigma)[sel], (ref_mu * sigma)[sel], rtol=0, atol=1e-9)
        torch.testing.assert_close((g_sigma * sigma)[sel], (ref_sigma * sigma)[sel], rtol=0, atol=1e-9)
    # float32: against the definition at the float32-rounded inputs
    m32, s32, a32, y32 = (v.float() for v in (mu, sigma, alpha, y))
    ref32 = receiver_lse_reference(*(v.double() for v in (m32, s32, a32, y32)), K)
    got32 = mixture_lse(m32, s32, a32, y32, K).double()
    sane = (ref32.abs() < 1e4) & ((mu - y.mean(0)).abs() < 8 * (sigma + alpha.rsqrt()))
    torch.testing.assert_close(got32[sane], ref32[sane], rtol=2e-5, atol=1e-5)


def test_the_bounds_are_what_keep_the_shortcuts_exact(monkeypatch):
    """Negative controls. With TOL raised so that every bound passes, the closed form and the windows are taken
    wherever they are tried and the receiver moves far from the definition (the end bins and the bins outside
    the windows do matter); with windows far too narrow (C = 0.5), the bound sends those rows to the full sum
    and the receiver stays exact."""
    mu, sigma, alpha, y = _inputs(3000, 1, seed=7)
    ref = receiver_lse_reference(mu, sigma, alpha, y, K)
    assert (mixture_lse(mu, sigma, alpha, y, K) - ref).abs().max() < 1e-9
    full_before = int((receiver.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())

    with monkeypatch.context() as mp:
        mp.setitem(receiver.TOL, torch.float64, 1e300)
        loose = mixture_lse(mu, sigma, alpha, y, K)
        full_loose = int((receiver.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())
    assert full_loose < full_before // 2  # only rows whose window is all K bins anyway remain
    assert (loose - ref).abs().max() > 1e-2
    with monkeypatch.context() as mp:
        mp.setitem(receiver.WINDOW_C, torch.float64, 0.5)
        mp.setattr(receiver, "ANALYTIC_MIN_BINS", 10**9)  # windows only: the bound alone must catch them
        narrow = mixture_lse(mu, sigma, alpha, y, K)
        full_after = int((receiver.receiver_paths(mu, sigma, alpha, y, K) == FULL).sum())
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
    ok, lam, _, _ = receiver._analytic(mu, sigma, alpha, y, K, receiver.TOL[torch.float64])
    ref = receiver_lse_reference(mu, sigma, alpha, y, K)
    near = (lam - ref).abs() > 1e-6
    assert int(near.sum()) > 50 and not bool((ok & near).any())
    centre = torch.zeros(n, dtype=torch.float64)
    y_c = torch.linspace(-0.2, 0.2, n, dtype=torch.float64)[None]
    ok_c, lam_c, _, _ = receiver._analytic(centre, sigma * 0.5, alpha * 10, y_c, K, receiver.TOL[torch.float64])
    assert bool(ok_c.all())
    torch.testing.assert_close(lam_c, receiver_lse_reference(centre, sigma * 0.5, alpha * 10, y_c, K), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_output_receiver_equals_the_definition(dtype):
    """mixture_lse_fixed (one p_O for all elements: the prior N(0, 1) at t = 0) equals the definition with
    (mu, sigma) = (0, 1) (MATH.md s.4), for 2 sender samples."""
    _, _, alpha, y = _inputs(2000, 2, seed=11)
    zero = torch.zeros(2000, dtype=torch.float64)
    logp = dgauss.bin_probs(zero[:1], zero[:1] + 1.0, K)[0].log()
    ref = receiver_lse_reference(zero, zero + 1.0, alpha, y, K)
    got = mixture_lse_fixed(logp, alpha.to(dtype), y.to(dtype)).double()
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-4, 1e-5)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def test_nstep_loss_gradients_equal_autograd_through_the_definition(monkeypatch):
    """L^n (MATH.md s.4) with prior rows (i = 1), late and early steps in one batch: the network's gradient
    through the fused, windowed and closed-form receiver equals autograd through the O(K) reference."""
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
    paths = set()
    real = receiver.mixture_lse

    def recording(mu, sigma, alpha, y, K_, chunk):  # what dispatch hands the method: record the paths taken
        paths.update(receiver.receiver_paths(mu.detach(), sigma.detach(), alpha, y, K_).tolist())
        return real(mu, sigma, alpha, y, K_, chunk)

    monkeypatch.setattr(receiver, "mixture_lse", recording)
    loss, fused = grads(model)
    monkeypatch.setenv("BFNBENCH_FAST", "0")  # the reference O(K) sums throughout, prior rows included
    assert fast.dispatch("receiver_lse", x) is None and fast.dispatch("receiver_lse_prior", x) is None
    loss_ref, ref = grads(model)
    assert paths == {ANALYTIC, WINDOW, FULL}
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _bin_mean_routes(mu, sigma, K_=K):
    """The rows of each route of fast.khat_torch: Euler-Maclaurin ends, the narrow windows, the wider
    windows (aliasing or an end near), and k-hat = mu."""
    h = 2.0 / K_
    s = sigma / h
    near = (mu.abs() + bounds.Z_FAR * sigma) > 1
    em = s >= bounds.S_EM
    narrow = s < bounds.S_NARROW
    window = ~em & ~narrow & (near | (s < bounds.S_ALIAS))
    return {"em": em, "narrow": narrow, "window": window, "mu": ~em & ~narrow & ~window}


def test_bin_mean_routes_equal_the_direct_sum(monkeypatch):
    """k-hat = sum_k p(k) k_c and its derivatives (MATH.md s.4) on each of bin_mean's routes, float64: within
    BIN_MEAN_TOL (1e-9 values, 1e-8 derivatives) of autograd through the O(K) sum. The torch routes (every
    device; tests/test_bfn_fast_numba.py has the CPU kernel's)."""
    use_backend(monkeypatch, "torch")
    mu, sigma = bin_mean_cases()
    assert_routes_exact(mu, sigma, _bin_mean_routes(mu, sigma), K)


def test_bin_mean_bounds_bound_what_they_leave_out():
    """Each bound in fast.bounds against the quantity it bounds, computed directly, and below BIN_MEAN_TOL at the
    thresholds bin_mean uses: the lattice's aliasing (the Fourier series A, summed to m = 40), the edges
    beyond a window (summed to 400 edges) and a far end's clipped edges."""
    h = 2.0 / K
    tol_v, tol_g = bounds.BIN_MEAN_TOL
    Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    for s in (0.25, 0.4, 0.6, 0.8, bounds.S_ALIAS, 1.5):
        q = math.exp(-2 * math.pi**2 * s * s)
        for u in (0.1, 0.37, 0.8):
            A = [
                abs(sum(h / math.pi * q ** (m * m) * math.sin(2 * math.pi * m * u) / m for m in range(1, 40))),
                abs(sum(2 * q ** (m * m) * math.cos(2 * math.pi * m * u) for m in range(1, 40))),
                abs(sum(4 * math.pi * s * m * q ** (m * m) * math.sin(2 * math.pi * m * u) for m in range(1, 40))),
            ]
            assert all(a <= b for a, b in zip(A, bounds.alias_bound(s, h), strict=True))
            for M in (1, 2, 5):  # the terms after the first M (what a truncated series leaves out)
                tail = [
                    abs(sum(h / math.pi * q ** (m * m) * math.sin(2 * math.pi * m * u) / m for m in range(M + 1, 40))),
                    abs(sum(2 * q ** (m * m) * math.cos(2 * math.pi * m * u) for m in range(M + 1, 40))),
                    abs(sum(4 * math.pi * s * m * q ** (m * m) * math.sin(2 * math.pi * m * u) for m in range(M + 1, 40))),
                ]  # fmt: skip
                assert all(a <= b for a, b in zip(tail, bounds.alias_bound(s, h, M), strict=True))
    assert all(b < t for b, t in zip(bounds.alias_bound(bounds.S_ALIAS, h), (tol_v, tol_g, tol_g), strict=True))
    for s in (0.05, 0.3, 1.0, bounds.S_EM):
        for c in (1.5, 3.0, bounds.WINDOW_Z):
            z = [c + i / s for i in range(400)]  # one side's omitted edges, nearest first
            rest = [h * 2 * sum(Phi(-w) for w in z), 2 / s * sum(phi(w) for w in z), 2 / s * sum(w * phi(w) for w in z)]
            assert all(r <= b for r, b in zip(rest, bounds.window_bound(c, s, h), strict=True))
            if c == bounds.WINDOW_Z:
                assert all(b < t for b, t in zip(bounds.window_bound(c, s, h), (tol_v, tol_g, tol_g), strict=True))
    for s in (bounds.S_NARROW, 1.0, bounds.S_EM, 50.0):
        for z0 in (-1.0, -3.0, -bounds.Z_FAR):
            z = [z0 - i / s for i in range(20000)]
            rest = [h * sum(Phi(w) for w in z), 1 / s * sum(phi(w) for w in z), 1 / s * sum(abs(w) * phi(w) for w in z)]
            assert all(r <= b for r, b in zip(rest, bounds.far_end_bound(z0, s, h), strict=True))
    assert all(b < t for b, t in zip(bounds.far_end_bound(-bounds.Z_FAR, bounds.S_EM, h), (tol_v, tol_g, tol_g), strict=True))


@pytest.mark.parametrize(
    "name, value, route", [("S_ALIAS", 0.6, "window"), ("Z_FAR", 2.0, "window"), ("WINDOW_Z", 2.0, "narrow")]
)
def test_bin_mean_thresholds_are_what_keep_it_exact(monkeypatch, name, value, route):
    """Negative controls: with a threshold loosened past what its bound allows, bin_mean leaves out terms that
    matter (MATH.md s.4): k-hat = mu for kernels 0.6 bins wide, where the lattice's aliasing is ~1e-3 of a bin;
    ends 2 sigma away treated as far; windows 2 sigma wide. The error then exceeds BIN_MEAN_TOL by orders of
    magnitude on that route's rows. The torch routes (tests/test_bfn_fast_numba.py has the CPU kernel's)."""
    use_backend(monkeypatch, "torch")
    mu, sigma = bin_mean_cases()
    rows = _bin_mean_routes(mu, sigma)[route]
    assert max(float(e[rows].max()) for e in bin_mean_errors(mu, sigma, K)) < bounds.BIN_MEAN_TOL[1]
    monkeypatch.setattr(bounds, name, value)
    err = bin_mean_errors(mu, sigma, K)
    assert max(float(e[rows].max()) for e in err) > 1e3 * bounds.BIN_MEAN_TOL[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bin_mean_edge_inputs(monkeypatch, backend):
    """No elements; broadcast mu and sigma (gradients reduced to each input's shape); and a kernel so wide (sigma =
    1e5) that its lower end, exactly Z_FAR sigma away, still moves k-hat by ~1e-8 (the s_far rule: the far-end
    bound grows with sigma), against the O(K) sum, with the rule switched off as a negative control."""
    use_backend(monkeypatch, backend)
    assert discretised.bin_mean(torch.zeros(0), torch.ones(0), K).shape == (0,)
    mu = torch.tensor([[0.1], [-0.7]], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.002, 0.05, 3.0], dtype=torch.float64, requires_grad=True)
    got = discretised.bin_mean(mu, sigma, K)
    direct = dgauss.bin_mean_sum(*torch.broadcast_tensors(mu, sigma), K)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-9)
    gf, gd = (torch.autograd.grad(v.sum(), [mu, sigma]) for v in (got, direct))
    for a, b, like in zip(gf, gd, (mu, sigma), strict=True):
        assert a.shape == like.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    wide_sigma = torch.tensor([1e5], dtype=torch.float64)
    wide_mu = bounds.Z_FAR * wide_sigma - 1.0  # the lower end's edge at z = -Z_FAR: not "near"
    direct = dgauss.bin_mean_sum(wide_mu, wide_sigma, K)
    assert float((discretised.bin_mean(wide_mu, wide_sigma, K) - direct).abs()) < bounds.BIN_MEAN_TOL[0]
    monkeypatch.setattr(bounds, "BIN_MEAN_TOL", (1.0, 1.0))  # s_far -> 1e11: the far end is dropped
    assert float((discretised.bin_mean(wide_mu, wide_sigma, K) - direct).abs()) > 5 * 1e-9


# ---------------------------------------------------------------- the references and the one dispatch


@pytest.mark.parametrize("K_", [2, 16, 256])
def test_k_hat_reference_is_the_definition(K_):
    """k_hat_reference's summation by parts (MATH.md s.4: k-hat = 1 - h/2 - h sum_j Phi(z_j), derivatives
    (h / sigma) sum phi and (h / sigma) sum z phi) against autograd through sum_k p(k) k_c (dgauss.bin_mean_sum),
    float64, split into several chunks; and bin_mean with every acceleration off is that reference."""
    mu, sigma = bin_mean_cases(n=3000, seed=K_)
    ref = k_hat_reference(mu, sigma, K_, chunk_elems=500 * K_)  # six chunks
    m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
    direct = dgauss.bin_mean_sum(m, s, K_)
    g_mu, g_sigma = torch.autograd.grad(direct.sum(), [m, s])
    torch.testing.assert_close(ref[0], direct.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(ref[1], g_mu, rtol=0, atol=1e-10)
    torch.testing.assert_close(ref[2], g_sigma, rtol=0, atol=1e-10)
    assert torch.equal(k_hat_reference(mu, sigma, K_), ref)  # one chunk: the same numbers


def test_receiver_lse_reference_is_the_full_tensor_definition():
    """receiver_lse_reference (the receiver's Lambda, MATH.md s.4) against the (S, N, K) tensor written out with
    torch.logsumexp in one piece, float64: chunking changes nothing; the weights' names are checked."""
    mu, sigma, alpha, y = _inputs(1500, 3, seed=21)
    lnp = (dgauss.bin_probs(mu, sigma, K) + dgauss.P_MIN).log()
    c = dgauss.centres(K, dtype=torch.float64)
    want = torch.logsumexp(lnp - 0.5 * alpha[None, :, None] * (y[..., None] - c) ** 2, -1).mean(0)
    got = receiver_lse_reference(mu, sigma, alpha, y, K, chunk_elems=100 * K)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="weights must be"):
        receiver_lse_reference(mu, sigma, alpha, y, K, weights="uniform")
    with pytest.raises(ValueError, match="y must be shaped"):
        receiver_lse_reference(mu, sigma, alpha, y[:, :10], K)


def test_dispatch_picks_one_implementation_per_quantity(monkeypatch):
    """fast.dispatch: numba on CPU float32/64 when it is installed and allowed, the torch routes elsewhere (half
    precision, BFNBENCH_NUMBA=0), the fused receiver everywhere, nothing with BFNBENCH_FAST=0 (the references);
    an unknown quantity is an error naming the known ones."""
    x = torch.zeros(4)
    monkeypatch.setenv("BFNBENCH_NUMBA", "1")
    assert fast.dispatch("k_hat", x.half()) is khat_torch.bin_mean_and_grads
    assert fast.dispatch("k_hat_squared_error", x.half()) is None
    if khat_numba.AVAILABLE:
        assert fast.backend("k_hat", x) == fast.backend("k_hat_squared_error", x) == "numba kernel"
    monkeypatch.setenv("BFNBENCH_NUMBA", "0")
    assert fast.dispatch("k_hat", x) is khat_torch.bin_mean_and_grads
    assert fast.dispatch("k_hat_squared_error", x) is None
    assert fast.dispatch("receiver_lse", x) is receiver.mixture_lse
    assert fast.dispatch("receiver_lse_prior", x) is receiver.mixture_lse_fixed
    monkeypatch.setenv("BFNBENCH_FAST", "0")
    assert all(fast.dispatch(q, x) is None for q in fast.QUANTITIES)
    assert fast.backend("k_hat", x) == "reference O(K) sum"
    with pytest.raises(ValueError, match="knows"):
        fast.dispatch("k-hat", x)


@pytest.mark.parametrize("quirks", [(), ("official",)])
def test_losses_equal_with_and_without_accelerations(monkeypatch, quirks):
    """The discretised BFN's L^inf, L^n (2 y-samples, prior rows included) and their network gradients are the same
    numbers with every acceleration on (numba where installed, torch routes, fused receiver) and off
    (BFNBENCH_FAST=0: the chunked O(K) references), with the paper's formulas and with the official quirks."""
    shape = (3, 4)
    spec = DataSpec("img", "discretised", shape, 16)
    g = torch.Generator().manual_seed(8)
    x = (2 * torch.randint(0, 16, (6, *shape), generator=g) + 1).float() / 16 - 1
    noise, y_noise = torch.randn(6, *shape, generator=g), torch.randn(2, 6, *shape, generator=g)
    t = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    i, n = torch.tensor([1, 2, 3, 5, 8, 10]), 10
    model = DiscretisedBFN(spec, TinyNet(shape, 1, 2, seed=1), sigma1=1e-3, quirks=quirks)

    def run():
        out = []
        for loss in (model.loss_cts(x, t, noise), model.loss_nstep(x, i, n, noise, y_noise)):
            model.zero_grad()
            loss.sum().backward()
            out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        return out

    accelerated = run()
    monkeypatch.setenv("BFNBENCH_FAST", "0")
    # L^n per example is n sum_d (-y_noise^2 / 2 - Lambda_d), float32 terms that cancel to ~1e-4 late in the flow.
    # Lambda holds alpha (y - k_c)^2 / 2 with y = x + y_noise / sqrt(alpha) rounded to float32, so a rounding of y
    # or of y - k_c moves it by ~eps sqrt(alpha) |y_noise|: the two paths may differ by a few such units per term
    eps = torch.finfo(torch.float32).eps
    root_a = model.schedule.alpha_i(i, n).float().sqrt().view(-1, 1, 1)
    ulps = 4 * eps * n * (1 + y_noise.square() + root_a * y_noise.abs()).mean(0).flatten(1).sum(1)
    for (a, ga), (b, gb), atol in zip(accelerated, run(), (1e-5, ulps), strict=True):
        assert ((a - b).abs() <= atol + 1e-5 * b.abs()).all(), (a - b, atol)
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)

