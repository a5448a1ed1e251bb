"""Are the discretised BFN's accelerations worth their code? Each against a plain chunked O(K) sum (pytest-benchmark).

    python -m pytest tests/bench/test_bench_khat_routes.py -m bench -s

Issue 14 asks to keep a fast path only where a measurement on its device justifies it. Two quantities, each
computed three ways on the same inputs, interleaved A B C A B C after warm-up, the median over rounds:

- k-hat and its two derivatives (MATH.md s.4; L^inf's per-pixel term):
  plain      the sums of discretised.k_hat_reference (k-hat = 1 - h/2 - h sum_j Phi(z_j), d/dmu = (h/sigma) sum phi,
             d/dsigma = (h/sigma) sum z phi over the K - 1 edges), chunked, in the input's dtype (`_plain_khat`):
             the cheapest plain O(K) sum, so the ratios below are conservative;
  reference  discretised.k_hat_reference itself (the same sums in float64; what BFNBENCH_FAST=0 runs);
  routes     fast.khat_torch.bin_mean_and_grads, the torch routes (Euler-Maclaurin ends, windows, the lattice mean);
  numba      fast.khat_numba.bin_mean_and_grads, the compiled kernel (CPU only).
- the receiver's Lambda = LSE_k(ln p_O(k) - alpha (y - k_c)^2 / 2) with its gradient (L^n's per-pixel term):
  plain      discretised.receiver_lse_reference (bin_probs, log, logsumexp over the K bins, chunked) and autograd;
  fused      fast.receiver.mixture_lse (closed form / windows / full sums, gradient in the same pass).

Inputs: one batch of 32 images of 28 x 28 pixels (25,088 elements), K = 16 and 256, at t ~ U(0, 1) (L^inf) or
step i ~ U{1..n} of n = 100 (L^n), sigma1 = 1e-3, from a calibrated stand-in for a network: sigma_x =
sqrt((1 - gamma) / gamma) exp(N(0, 0.3^2)) clamped to [1e-3, 10], mu_x = x + sigma_x N(0, 1); y = x +
N(0, 1 / alpha_i). A trained network's outputs differ, so the printed ratios are for this mix of sigmas.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import pytest
import torch

from suite.bfn import dgauss
from suite.bfn.discretised import k_hat_reference, receiver_lse_reference
from suite.bfn.fast import bounds, khat_numba, khat_torch, receiver

ROUNDS = int(os.environ.get("BFN_BENCH_ROUNDS", "15"))
N_PIX, B = 784, 32
SIGMA1 = 1e-3
ROWS: list[str] = []


def _inputs(K: int, seed: int = 0, n: int | None = None):
    g = torch.Generator().manual_seed(seed)
    N = B * N_PIX
    k = torch.randint(0, K, (N,), generator=g)
    x = ((2 * k + 1) / K - 1).double()
    if n is None:
        t = torch.rand(B, generator=g, dtype=torch.float64).repeat_interleave(N_PIX)
    else:
        i = torch.randint(1, n + 1, (B,), generator=g).repeat_interleave(N_PIX)
        t = (i - 1).double() / n
    gamma = 1 - SIGMA1 ** (2 * t)
    ratio = torch.sqrt((1 - gamma) / gamma.clamp(min=1e-300))
    sigma = (ratio * torch.exp(0.3 * torch.randn(N, generator=g, dtype=torch.float64))).clamp(1e-3, 10.0)
    mu = x + sigma * torch.randn(N, generator=g, dtype=torch.float64)
    out = {"mu": mu.float(), "sigma": sigma.float()}
    if n is not None:
        alpha = SIGMA1 ** (-2 * i.double() / n) * (1 - SIGMA1 ** (2 / n))
        out["alpha"] = alpha.float()
        out["y"] = (x + torch.randn(N, generator=g, dtype=torch.float64) / alpha.sqrt()).float()[None]
    return out


def _plain_khat(mu: torch.Tensor, sigma: torch.Tensor, K: int, chunk: int = 1 << 20) -> torch.Tensor:
    """(k-hat, d/dmu, d/dsigma), (3, N): the O(K) sums over the K - 1 edges, `chunk` elements x edges at a time."""
    h = 2.0 / K
    e = dgauss.edges(K, mu.device, mu.dtype)
    out = mu.new_empty(3, mu.shape[0])
    per = max(1, chunk // max(K - 1, 1))
    for a in range(0, mu.shape[0], per):
        m, s = mu[a : a + per, None], sigma[a : a + per, None]
        z = (e - m) / s
        P, p = dgauss.normal_cdf(z), dgauss.normal_pdf(z)
        out[0, a : a + per] = 1 - h / 2 - h * P.sum(-1)
        out[1, a : a + per] = h * p.sum(-1) / s[:, 0]
        out[2, a : a + per] = h * (z * p).sum(-1) / s[:, 0]
    return out


def _plain_receiver(mu, sigma, alpha, y, K: int) -> float:
    """Lambda per element by the reference, and its gradient by autograd; returns the summed value (for timing)."""
    m, s = mu.detach().requires_grad_(), sigma.detach().requires_grad_()
    lam = receiver_lse_reference(m, s, alpha, y, K)
    lam.sum().backward()
    return float(lam.detach().sum())


def _fused_receiver(mu, sigma, alpha, y, K: int) -> float:
    m, s = mu.detach().requires_grad_(), sigma.detach().requires_grad_()
    lam = receiver.mixture_lse(m, s, alpha, y, K)
    lam.sum().backward()
    return float(lam.detach().sum())


def _race(fns: dict) -> dict[str, float]:
    for f in fns.values():  # warm-up (and numba's compilation)
        f()
    times = {k: [] for k in fns}
    for _ in range(ROUNDS):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, numba {'on' if khat_numba.AVAILABLE else 'off'}; "
          f"{B} x {N_PIX} elements; median ms over {ROUNDS} rounds")
    for r in ROWS:
        print(r)


@pytest.mark.bench
@pytest.mark.parametrize("K", [16, 256])
def test_bench_khat_routes_against_plain_sum(benchmark, K):
    d = _inputs(K)
    mu, sigma = d["mu"], d["sigma"]
    ref = _plain_khat(mu.double(), sigma.double(), K)
    got = khat_torch.bin_mean_and_grads(mu.double(), sigma.double(), K)
    assert torch.allclose(got, ref, atol=1e-7, rtol=0)  # the same quantity, or the timing means nothing
    assert torch.allclose(k_hat_reference(mu.double(), sigma.double(), K), ref, atol=1e-12, rtol=0)
    fns = {"plain": lambda: _plain_khat(mu, sigma, K), "reference": lambda: k_hat_reference(mu, sigma, K),
           "routes": lambda: khat_torch.bin_mean_and_grads(mu, sigma, K)}  # fmt: skip
    if khat_numba.AVAILABLE:
        fns["numba"] = lambda: khat_numba.bin_mean_and_grads(mu, sigma, K, bounds.kernel_params(K))
    ms = _race(fns)
    benchmark.extra_info.update({f"{k}_ms": v for k, v in ms.items()})
    benchmark.pedantic(fns["routes"], rounds=3, iterations=1)
    ROWS.append(f"k-hat K={K:4d}: " + ", ".join(f"{k} {v:7.2f} ms" for k, v in ms.items())
                + "; plain / routes " + f"{ms['plain'] / ms['routes']:.1f}x"
                + (f", plain / numba {ms['plain'] / ms['numba']:.1f}x" if "numba" in ms else ""))


@pytest.mark.bench
@pytest.mark.parametrize("K", [16, 256])
def test_bench_receiver_against_plain_sum(benchmark, K):
    d = _inputs(K, seed=1, n=100)
    args = (d["mu"], d["sigma"], d["alpha"], d["y"])
    a, b = _plain_receiver(*[v.double() for v in args], K), _fused_receiver(*[v.double() for v in args], K)
    assert math.isclose(a, b, rel_tol=1e-9)
    ms = _race({"plain": lambda: _plain_receiver(*args, K), "fused": lambda: _fused_receiver(*args, K)})
    benchmark.extra_info.update({f"{k}_ms": v for k, v in ms.items()})
    benchmark.pedantic(lambda: _fused_receiver(*args, K), rounds=3, iterations=1)
    paths = torch.bincount(receiver.receiver_paths(*args, K).long(), minlength=3).tolist()
    ROWS.append(f"receiver K={K:4d}: plain {ms['plain']:7.2f} ms, fused {ms['fused']:7.2f} ms; plain / fused "
                f"{ms['plain'] / ms['fused']:.1f}x (elements analytic / window / full: {paths})")
