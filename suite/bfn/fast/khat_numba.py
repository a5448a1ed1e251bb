"""k-hat = sum_k p(k) k_c and its two derivatives on CPU in one compiled pass (numba; docs/bfn.md).

`suite.bfn.fast.dispatch` sends float32 / float64 CPU tensors here when numba is installed (and `BFNBENCH_NUMBA`
is not 0): `bin_mean_and_grads` for k-hat, and `k_hat_squared_error` for the discretised L^inf's whole per-pixel
term from the network's output. The torch routes (khat_torch) cost little arithmetic but a few dozen passes over
the data, each with its own dispatch; on CPU one loop reads each element once and writes its results once.
Measured against the O(K) reference sum (tests/bench/test_bench_khat_routes.py, 25,088 elements, one thread):
1.9x at K = 16, 39x at K = 256; the fused L^inf term is what keeps that loss at about the bare network's cost.

Per element, in lattice units u = (mu + 1) / h, s = sigma / h (h = 2 / K), from k-hat = mu + A + h L - h U
(fast/bounds.py: A the infinite lattice's aliasing, L / U the clipped ends; every threshold below is read from
there at call time):
  s < S_FOURIER    the edges within WINDOW_Z sigma of mu, summed directly (a span of 2 WINDOW_Z S_FOURIER = 3.5
                   lattice units, so at most 4 edges); every other edge has Phi = 0 or 1 to within `window_bound`.
  otherwise        mu + A + h L - h U, where
                   A by its Fourier series (h / pi) sum_m q^(m^2) sin(2 pi m u) / m, q = exp(-2 pi^2 s^2),
                     summed while q^(m^2) > FOURIER_EPS (at most 6 terms for s >= S_FOURIER; `alias_bound`
                     with M terms bounds the rest), and left out for s >= S_ALIAS (`alias_bound`);
                   L, U for each end within Z_FAR sigma (every end when s > s_far): for s >= S_EM by one-point
                     Euler-Maclaurin (khat_torch._end_sums' formulas), below it by the virtual edges beyond that
                     end within WINDOW_Z sigma (`window_bound`), those past it counting 1.
Everything is computed in float64, whatever the input dtype.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:
    import numba
except ImportError:  # the torch routes (khat_torch) run instead
    numba = None

from suite.bfn.fast.bounds import EM_COEFFS

AVAILABLE = numba is not None
MIN_CHUNK = 4096  # elements per thread; below 2 * MIN_CHUNK the calling thread does it all

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_C1, _C2, _C3, _C4 = EM_COEFFS


def _njit(fn):
    return numba.njit(nogil=True, cache=True)(fn) if AVAILABLE else fn


@_njit
def _end_em(z0, s):
    """Sums of Phi, phi, z phi over z_0 - i / s, i >= 0 (one end's clipped edges) by one-point Euler-Maclaurin:
    s int_{-inf}^{z0} f + f(z0) / 2 + sum_m c_m s^(1-2m) f^(2m-1)(z0), the derivatives by Hermite polynomials
    (khat_torch._end_sums has the derivation)."""
    Z = max(z0, -12.0)
    P = 0.5 * math.erfc(-Z * _SQRT1_2)
    p = math.exp(-0.5 * Z * Z) * _INV_SQRT_2PI
    h2 = Z * Z - 1.0
    h3 = Z * h2 - 2.0 * Z
    h4 = Z * h3 - 3.0 * h2
    h5 = Z * h4 - 4.0 * h3
    h6 = Z * h5 - 5.0 * h4
    h7 = Z * h6 - 6.0 * h5
    h8 = Z * h7 - 7.0 * h6
    v = 1.0 / (s * s)
    a0 = ((_C4 * h6 * v + _C3 * h4) * v + _C2 * h2) * v + _C1
    a1 = ((_C4 * h7 * v + _C3 * h5) * v + _C2 * h3) * v + _C1 * Z
    a2 = ((_C4 * h8 * v + _C3 * h6) * v + _C2 * h4) * v + _C1 * h2
    f = p / s
    return a0 * f + s * (Z * P + p) + 0.5 * P, s * P + 0.5 * p - a1 * f, 0.5 * Z * p - s * p - a2 * f


@_njit
def _end_direct(z0, s, W):
    """The same sums term by term: z_i = z0 - i / s > W count Phi = 1 (phi = 0), z_i < -W are left out."""
    inv = 1.0 / s
    i0 = math.ceil((z0 - W) * s) if z0 > W else 0.0
    sP, sp, szp = i0, 0.0, 0.0
    z = z0 - i0 * inv
    while z >= -W:
        sP += 0.5 * math.erfc(-z * _SQRT1_2)
        e = math.exp(-0.5 * z * z)
        sp += e
        szp += z * e
        z -= inv
    return sP, sp * _INV_SQRT_2PI, szp * _INV_SQRT_2PI


@_njit
def _khat(m, sg, K, prm):
    """(k-hat, d/dmu, d/dsigma) of one element; prm = (S_FOURIER, S_ALIAS, S_EM, Z_FAR, WINDOW_Z, s_far,
    FOURIER_EPS), passed in so the thresholds are read at call time."""
    s_fourier, s_alias, s_em, z_far, W, s_far, f_eps = prm[0], prm[1], prm[2], prm[3], prm[4], prm[5], prm[6]
    h = 2.0 / K
    s = sg / h
    inv = 1.0 / s
    u = (m + 1.0) / h
    if s < s_fourier:  # edges 1..K-1 within W sigma of mu; those above the window count Phi = 1
        j_lo = max(1.0, math.ceil(u - W * s))
        j_hi = min(K - 1.0, math.floor(u + W * s))
        sP = K - 1.0 - min(max(j_hi, 0.0), K - 1.0)
        sp, szp = 0.0, 0.0
        j = j_lo
        while j <= j_hi:
            z = (j - u) * inv
            sP += 0.5 * math.erfc(-z * _SQRT1_2)
            e = math.exp(-0.5 * z * z)
            sp += e
            szp += z * e
            j += 1.0
        return 1.0 - 0.5 * h - h * sP, sp * _INV_SQRT_2PI * inv, szp * _INV_SQRT_2PI * inv
    k, d_mu, d_sigma = m, 1.0, 0.0
    if s < s_alias:  # A, dA/dmu = 2 sum q^(m^2) cos(2 pi m u), dA/dsigma = -4 pi s sum m q^(m^2) sin(.)
        q = math.exp(-2.0 * math.pi * math.pi * s * s)
        x = 2.0 * math.pi * u
        c1 = math.cos(x)
        sin_prev, cos_prev, sin_m, cos_m = 0.0, 1.0, math.sin(x), c1
        qm, ratio, q2 = q, q * q * q, q * q  # q^(m^2) and q^(2m+1): q^((m+1)^2) = q^(m^2) q^(2m+1)
        A, dA, sA, mm = 0.0, 0.0, 0.0, 1.0
        while qm > f_eps:
            A += qm * sin_m / mm
            dA += qm * cos_m
            sA += mm * qm * sin_m
            sin_next = 2.0 * c1 * sin_m - sin_prev  # Chebyshev: sin / cos of (m+1) x from m x and (m-1) x
            cos_next = 2.0 * c1 * cos_m - cos_prev
            sin_prev, cos_prev, sin_m, cos_m = sin_m, cos_m, sin_next, cos_next
            qm *= ratio
            ratio *= q2
            mm += 1.0
        k += h / math.pi * A
        d_mu += 2.0 * dA
        d_sigma -= 4.0 * math.pi * s * sA
    for sign in (-1.0, 1.0):  # the lower end's edge at z0 = (-1 - mu) / sigma, the upper's (in -z) at (mu - 1) / sigma
        z0 = (sign * m - 1.0) / sg
        if z0 <= -z_far and s <= s_far:
            continue
        if s >= s_em:
            L0, L1, L2 = _end_em(z0, s)
        else:
            L0, L1, L2 = _end_direct(z0, s, W)
        k -= sign * h * L0  # + h L for the lower end, - h U for the upper
        d_mu -= L1 * inv
        d_sigma += sign * L2 * inv
    return k, d_mu, d_sigma


@_njit
def _kernel(mu, sigma, K, out, prm, start, stop):
    """out[:, i] = (k-hat, d/dmu, d/dsigma) of element i, for i in [start, stop)."""
    for i in range(start, stop):
        k, d_mu, d_sigma = _khat(float(mu[i]), float(sigma[i]), K, prm)
        out[0, i] = k
        out[1, i] = d_mu
        out[2, i] = d_sigma


@_njit
def _sq_err_kernel(net_out, mu, x, coef, K, prm, log_sigma_range, sq, grad, start, stop):
    """The discretised L^inf's elementwise term from the network's output (MATH.md s.4), for i in [start, stop):
        mu_x = mu / gamma - sqrt((1 - gamma) / gamma) mu_eps,
        ln sigma_x = clamp(ln sqrt((1 - gamma) / gamma) + keep ln sigma_eps, lo, hi),
        sq_i = (x - k-hat(mu_x, sigma_x))^2, and grad[i] = d sq_i / d (mu_eps, ln sigma_eps)
    (the clamp passing gradient on [lo, hi], as torch.clamp's does). coef[b] = (1/gamma, sqrt((1-gamma)/gamma),
    keep, ln sqrt((1-gamma)/gamma)) of example b; net_out and grad are (B, 2, D) arrays of any strides, element
    i = b D + d of the flat (B D) arrays mu, x, sq."""
    lo, hi = log_sigma_range[0], log_sigma_range[1]
    D = mu.shape[0] // net_out.shape[0]
    b, d = start // D, start % D  # stepped along with i (an integer division per element costs ~10 ns)
    for i in range(start, stop):
        if d == D:
            b, d = b + 1, 0
        inv_g, ratio, keep, log_ratio = coef[b, 0], coef[b, 1], coef[b, 2], coef[b, 3]
        mu_x = float(mu[i]) * inv_g - ratio * float(net_out[b, 0, d])
        ls = log_ratio + keep * float(net_out[b, 1, d])
        inside = 1.0 if lo <= ls <= hi else 0.0
        ls = min(max(ls, lo), hi)
        sigma_x = math.exp(ls)
        k, d_mu, d_sigma = _khat(mu_x, sigma_x, K, prm)
        e = float(x[i]) - k
        sq[i] = e * e
        g = -2.0 * e  # d sq / d k-hat
        grad[b, 0, d] = -g * d_mu * ratio
        grad[b, 1, d] = g * d_sigma * sigma_x * keep * inside
        d += 1


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the pool and its worker count


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[1] < n:
        _POOL = (ThreadPoolExecutor(max_workers=n, thread_name_prefix="bfnbench-khat"), n)
    return _POOL[0]


def enabled(mu: torch.Tensor) -> bool:
    """Whether this kernel can take mu: numba installed, BFNBENCH_NUMBA not 0, a float32 / float64 CPU tensor
    (suite.bfn.fast.dispatch asks)."""
    return (
        AVAILABLE
        and mu.device.type == "cpu"
        and mu.dtype in (torch.float32, torch.float64)
        and os.environ.get("BFNBENCH_NUMBA", "1") != "0"
    )


def _run(kernel, n: int, args: tuple) -> None:
    """kernel(*args, start, stop) over [0, n), split over torch's intra-op thread count when there are at least
    2 * MIN_CHUNK elements: the first chunk on the calling thread, the others on a pool (the kernels release
    the GIL)."""
    threads = min(torch.get_num_threads(), n // MIN_CHUNK)
    if threads <= 1:
        kernel(*args, 0, n)
        return
    bounds = [n * c // threads for c in range(threads + 1)]
    jobs = [_pool(threads - 1).submit(kernel, *args, a, b) for a, b in zip(bounds[1:-1], bounds[2:], strict=True)]
    kernel(*args, 0, bounds[1])  # the first chunk on this thread
    for job in jobs:
        job.result()


def _need_numba() -> None:
    if not AVAILABLE:
        raise RuntimeError("fast.khat_numba needs numba: pip install numba, or set BFNBENCH_NUMBA=0 for the torch routes")


def bin_mean_and_grads(mu: torch.Tensor, sigma: torch.Tensor, K: int, params: tuple[float, ...]) -> torch.Tensor:
    """(k-hat, d/dmu, d/dsigma) as a (3, N) tensor of mu's dtype, for flat contiguous CPU mu, sigma."""
    _need_numba()
    n = mu.shape[0]
    out = torch.empty(3, n, dtype=mu.dtype)
    _run(_kernel, n, (mu.detach().numpy(), sigma.detach().numpy(), K, out.numpy(), _params(params)))
    return out


def k_hat_squared_error(
    net_out: torch.Tensor,
    mu: torch.Tensor,
    x: torch.Tensor,
    coef: torch.Tensor,
    K: int,
    params: tuple[float, ...],
    log_sigma_range: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - k-hat)^2 per element, shaped like mu, and its gradient with respect to the network's output
    (mu_eps, ln sigma_eps), shaped and laid out like net_out (`_sq_err_kernel`). net_out: (*mu.shape, 2); coef:
    (B, 4), per example (1/gamma, sqrt((1-gamma)/gamma), keep, ln sqrt((1-gamma)/gamma)). All CPU tensors.

    The gradient keeps net_out's memory layout (a conv net's output is a channels-first tensor seen through a
    permute), so the network's backward receives the layout its forward produced."""
    _need_numba()
    n, B = mu.numel(), mu.shape[0]
    D = n // B
    out_cf = net_out.detach().movedim(-1, 1)  # (B, 2, *shape): a view of a channels-first network's output
    if out_cf.is_contiguous():  # the gradient in the same layout, so the network's backward gets what it made
        o3, grad_cf = out_cf.reshape(B, 2, D), torch.empty_like(out_cf)
        g3, grad = grad_cf.view(B, 2, D), grad_cf.movedim(1, -1)
    else:  # channels last (transformers, MLPs): (B, D, 2) arrays read through transposed views
        o3 = net_out.detach().contiguous().view(B, D, 2).transpose(1, 2)
        grad = torch.empty(net_out.shape, dtype=net_out.dtype)
        g3 = grad.view(B, D, 2).transpose(1, 2)
    sq = torch.empty(mu.shape, dtype=mu.dtype)
    args = (
        o3.numpy(), mu.detach().reshape(-1).contiguous().numpy(), x.detach().reshape(-1).contiguous().numpy(),
        coef.detach().to(torch.float64).contiguous().numpy(), K, _params(params),
        np.asarray(log_sigma_range, dtype=np.float64), sq.view(-1).numpy(), g3.numpy(),
    )  # fmt: skip
    _run(_sq_err_kernel, n, args)
    return sq, grad


def _params(params: tuple[float, ...]) -> np.ndarray:
    return np.asarray(params, dtype=np.float64)
