"""The compiled CPU kernel for k-hat = sum_k p(k) k_c (suite/bfn/khat_numba.py; MATH.md s.4, the discretised L^inf).

Each of its routes against autograd through the O(K) sum in float64; each threshold with a negative control
(moved past what its bound allows, the route's error grows by orders of magnitude); the Fourier series'
truncation against its bound; float32, threads and the dispatch rules (torch routes wherever the kernel does
not apply). tests/test_bfn_fast_torch.py has the same checks for the torch routes.
"""

import math

import pytest
import torch

import suite.bfn.discretised as discretised
from suite.bfn.fast import bounds, khat_numba, khat_torch
from tests.helpers.khat import assert_routes_exact, bin_mean_cases, bin_mean_errors, use_backend

K = 256


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    use_backend(monkeypatch, "numba")


def _routes(mu, sigma, K_=K):
    """The rows of each route of the kernel: a window of edges (s < S_FOURIER); mu + A by its Fourier series
    (S_FOURIER <= s < S_ALIAS); mu with an end within Z_FAR sigma summed term by term (s < S_EM) or by
    Euler-Maclaurin (s >= S_EM); and k-hat = mu exactly."""
    h = 2.0 / K_
    s = sigma / h
    near = (mu.abs() + bounds.Z_FAR * sigma) > 1
    window = s < bounds.S_FOURIER
    fourier = ~window & (s < bounds.S_ALIAS)
    rest = ~window & ~fourier
    return {
        "window": window,
        "fourier": fourier,
        "direct ends": rest & near & (s < bounds.S_EM),
        "euler-maclaurin ends": rest & near & (s >= bounds.S_EM),
        "mu": rest & ~near,
    }


def test_every_route_equals_the_direct_sum():
    """k-hat and both derivatives (MATH.md s.4) within BIN_MEAN_TOL (1e-9 values, 1e-8 derivatives) of autograd
    through the O(K) sum, route by route, float64."""
    mu, sigma = bin_mean_cases()
    assert_routes_exact(mu, sigma, _routes(mu, sigma), K)


@pytest.mark.parametrize(
    "module, name, value, route",
    [
        (bounds, "FOURIER_EPS", 1e-2, "fourier"),  # the series cut after its first term or two
        (bounds, "S_ALIAS", 0.6, "fourier"),  # A left out for kernels 0.6-1.05 bins wide
        (bounds, "Z_FAR", 2.0, "direct ends"),  # ends 2 sigma away treated as far
        (bounds, "Z_FAR", 2.0, "euler-maclaurin ends"),
        (bounds, "WINDOW_Z", 2.0, "window"),  # windows 2 sigma wide
        (bounds, "WINDOW_Z", 2.0, "direct ends"),
    ],
)
def test_thresholds_are_what_keep_it_exact(monkeypatch, module, name, value, route):
    """Negative controls: each threshold moved past what its bound allows leaves out terms that matter, and the
    error on that route's rows exceeds BIN_MEAN_TOL by three orders of magnitude (MATH.md s.4)."""
    mu, sigma = bin_mean_cases()
    rows = _routes(mu, sigma)[route]
    assert max(float(e[rows].max()) for e in bin_mean_errors(mu, sigma, K)) < bounds.BIN_MEAN_TOL[1]
    s_far = bounds.s_far(K)  # kept as it is: at Z_FAR = 2 the s_far rule would otherwise sum every end
    monkeypatch.setattr(bounds, "s_far", lambda K_: s_far)
    monkeypatch.setattr(module, name, value)
    assert max(float(e[rows].max()) for e in bin_mean_errors(mu, sigma, K)) > 1e3 * bounds.BIN_MEAN_TOL[1]


def test_fourier_series_stops_within_its_bound():
    """The kernel sums A's terms while q^(m^2) > FOURIER_EPS; this test applies that rule itself (the kernel's
    own loop is checked by the FOURIER_EPS negative control above). Over S_FOURIER <= s < S_ALIAS it gives at most 6
    terms, and `bounds.alias_bound` with that many terms (tested against the sum it bounds in
    test_bfn_fast_torch.py) puts what is left far below BIN_MEAN_TOL, for K = 2 (h = 1) and K = 256."""
    tol_v, tol_g = bounds.BIN_MEAN_TOL
    counts = []
    for s in torch.linspace(bounds.S_FOURIER, bounds.S_ALIAS, 50).tolist():
        q = math.exp(-2 * math.pi**2 * s * s)
        M = max(m for m in range(1, 100) if q ** (m * m) > bounds.FOURIER_EPS)
        counts.append(M)
        for K_ in (2, 256):
            bound = bounds.alias_bound(s, 2.0 / K_, M)
            assert all(b < 1e-6 * t for b, t in zip(bound, (tol_v, tol_g, tol_g), strict=True)), (s, K_, bound)
    assert max(counts) <= 6 and min(counts) >= 1


def test_float32_inputs_give_the_float64_result_rounded():
    """The kernel computes in float64 whatever the input: float32 inputs give the float64 values of the same
    inputs, rounded once to float32 (bit for bit)."""
    mu, sigma = (v.float() for v in bin_mean_cases(2000, seed=5))
    p = bounds.kernel_params(K)
    out32 = khat_numba.bin_mean_and_grads(mu, sigma, K, p)
    out64 = khat_numba.bin_mean_and_grads(mu.double(), sigma.double(), K, p)
    assert out32.dtype == torch.float32
    assert torch.equal(out32, out64.float())


def test_threads_split_the_elements_without_changing_them(monkeypatch):
    """Chunks over two threads (MIN_CHUNK lowered so a small batch splits) give the single-thread result exactly."""
    mu, sigma = bin_mean_cases(3000, seed=6)
    p = bounds.kernel_params(K)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = khat_numba.bin_mean_and_grads(mu, sigma, K, p)
        torch.set_num_threads(2)
        monkeypatch.setattr(khat_numba, "MIN_CHUNK", 64)
        two = khat_numba.bin_mean_and_grads(mu, sigma, K, p)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_dispatch_falls_back_to_the_torch_routes(monkeypatch):
    """The kernel takes float32 / float64 CPU tensors unless BFNBENCH_NUMBA=0 or numba is missing; bin_mean then
    runs the torch routes (the same sums), and the kernel itself says how to get numba."""
    x = torch.zeros(3)
    assert khat_numba.enabled(x) and khat_numba.enabled(x.double())
    assert not khat_numba.enabled(x.half()) and not khat_numba.enabled(x.bfloat16())
    monkeypatch.setenv("BFNBENCH_NUMBA", "0")
    assert not khat_numba.enabled(x)
    monkeypatch.setenv("BFNBENCH_NUMBA", "1")
    monkeypatch.setattr(khat_numba, "AVAILABLE", False)
    assert not khat_numba.enabled(x)
    with pytest.raises(RuntimeError, match="pip install numba"):
        khat_numba.bin_mean_and_grads(x, x + 1, K, bounds.kernel_params(K))
    calls = []
    monkeypatch.setattr(khat_torch, "bin_mean_and_grads", lambda *a: calls.append(1) or torch.zeros(3, 3))
    discretised.bin_mean(x, x + 1, K)
    assert calls == [1]


def test_s_fourier_only_chooses_between_exact_routes(monkeypatch):
    """S_FOURIER is a cost threshold, not an accuracy one: the Fourier series is exact for any s > 0 (it needs
    more terms as s shrinks), so moving the threshold down to 0.1 sends the rows with 0.1 <= s < 0.25 from the
    window to the series and they stay within BIN_MEAN_TOL of the O(K) sum."""
    mu, sigma = bin_mean_cases()
    s = sigma / (2.0 / K)
    rows = (s >= 0.1) & (s < bounds.S_FOURIER)
    assert int(rows.sum()) > 150
    monkeypatch.setattr(bounds, "S_FOURIER", 0.1)
    err_v, err_mu, err_sigma = bin_mean_errors(mu[rows], sigma[rows], K)
    tol_v, tol_g = bounds.BIN_MEAN_TOL
    assert float(err_v.max()) < tol_v and float(err_mu.max()) < tol_g and float(err_sigma.max()) < tol_g
