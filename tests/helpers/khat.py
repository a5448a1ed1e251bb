"""Shared inputs and error measure for the k-hat tests (discretised.bin_mean through both accelerated backends)."""

import math

import torch

import suite.bfn.dgauss as dgauss
import suite.bfn.discretised as discretised
from suite.bfn.fast import bounds, khat_numba


def bin_mean_cases(n=6000, seed=3):
    """Means in [-1.5, 1.5] (beyond both ends too), sigma log-uniform in [1e-3, 10], float64."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, generator=g, dtype=torch.float64) * 3 - 1.5
    sigma = 1e-3 * torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * math.log(1e4))
    return mu, sigma


def bin_mean_errors(mu, sigma, K):
    """|bin_mean - bin_mean_sum| for the value and both derivatives (autograd through the O(K) definition)."""
    m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
    fast, direct = discretised.bin_mean(m, s, K), dgauss.bin_mean_sum(m, s, K)
    gf = torch.autograd.grad(fast.sum(), [m, s])
    gd = torch.autograd.grad(direct.sum(), [m, s])
    return (fast - direct).abs().detach(), *((a - b).abs() for a, b in zip(gf, gd, strict=True))


def assert_routes_exact(mu, sigma, routes: dict, K):
    """Each route (a name -> row mask) has more than 150 of the cases, and on its rows k-hat and both derivatives
    lie within BIN_MEAN_TOL (values, derivatives) of autograd through the O(K) sum."""
    assert all(int(r.sum()) > 150 for r in routes.values()), {k: int(r.sum()) for k, r in routes.items()}
    err_v, err_mu, err_sigma = bin_mean_errors(mu, sigma, K)
    tol_v, tol_g = bounds.BIN_MEAN_TOL
    for name, rows in routes.items():
        assert float(err_v[rows].max()) < tol_v, name
        assert float(err_mu[rows].max()) < tol_g, name
        assert float(err_sigma[rows].max()) < tol_g, name


BACKENDS = ["torch", "numba"]


def use_backend(monkeypatch, backend: str) -> None:
    """bin_mean through the torch routes (every device; BFNBENCH_NUMBA=0) or the compiled CPU kernel (khat_numba)."""
    monkeypatch.setenv("BFNBENCH_NUMBA", "0" if backend == "torch" else "1")
    probe = torch.zeros(1)
    assert khat_numba.enabled(probe) == (backend == "numba")
