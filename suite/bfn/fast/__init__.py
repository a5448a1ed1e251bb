"""Optional accelerations of the discretised BFN's per-element sums, behind one dispatch (docs/bfn.md).

The discretised BFN's losses are defined, and computed by default where nothing here applies, by the chunked
O(K) sums in suite/bfn/discretised.py (`k_hat_reference`, `receiver_lse_reference`). This package holds faster
ways to compute the same numbers, each tested against those references (tests/test_bfn_fast_*.py) and each kept
because a measurement on its device justifies it (tests/bench/test_bench_khat_routes.py for the sums alone,
tests/bench/test_bench_bfn.py for whole training steps):

  quantity              implementation                 device                  against the O(K) reference, CPU
  "k_hat"               khat_numba.bin_mean_and_grads  CPU, float32/64, numba  1.9x (K = 16), 39x (K = 256)
                        khat_torch.bin_mean_and_grads  any other               1.5x (K = 16), 14.5x (K = 256)
  "k_hat_squared_error" khat_numba.k_hat_squared_error CPU, float32/64, numba  L^inf ~1.0x the bare network
  "receiver_lse"        receiver.mixture_lse           any                     2.0x (K = 16), 10x (K = 256)
  "receiver_lse_prior"  receiver.mixture_lse_fixed     any                     one shared p_O: a (N, K) x (K,) matmul

(One thread, 32 x 784 elements, torch 2.13 CPU.) On a GPU, where
the torch routes' row selections (nonzero, index_select) cost a host synchronisation each, the plain O(K) sum is
one fused elementwise kernel per chunk; we expect the routes to win there only for large K and have not
measured it (no GPU was available): `BFNBENCH_FAST=0` runs the references for such a comparison.

`dispatch(quantity, like)` returns the implementation for tensors like `like`, or None: compute the reference.
BFNBENCH_FAST=0 turns every acceleration off; BFNBENCH_NUMBA=0 only the compiled CPU kernels (the torch routes
then take k-hat, and L^inf's per-pixel term runs as torch passes).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from suite.bfn.fast import bounds, khat_numba, khat_torch, receiver

QUANTITIES = ("k_hat", "k_hat_squared_error", "receiver_lse", "receiver_lse_prior")


def enabled() -> bool:
    """False when BFNBENCH_FAST=0: every quantity then takes its reference path."""
    return os.environ.get("BFNBENCH_FAST", "1") != "0"


def _k_hat_numba(mu: torch.Tensor, sigma: torch.Tensor, K: int) -> torch.Tensor:
    return khat_numba.bin_mean_and_grads(mu, sigma, K, bounds.kernel_params(K))


def _k_hat_squared_error_numba(net_out, mu, x, coef, K, log_sigma_range):
    return khat_numba.k_hat_squared_error(net_out, mu, x, coef, K, bounds.kernel_params(K), log_sigma_range)


def dispatch(quantity: str, like: torch.Tensor) -> Callable | None:
    """The accelerated implementation of `quantity` (one of QUANTITIES) for tensors like `like`, or None.

    Signatures, as the references in discretised.py take them:
      k_hat(mu, sigma, K) -> (3, N): k-hat, d/dmu, d/dsigma for flat contiguous mu, sigma;
      k_hat_squared_error(net_out, mu, x, coef, K, log_sigma_range) -> (sq, d sq / d net_out) (khat_numba);
      receiver_lse(mu, sigma, alpha, y, K, chunk_elems) -> (N,), differentiable in mu, sigma;
      receiver_lse_prior(logp, alpha, y, chunk_elems) -> (N,), one fixed ln p_O(k) for every element."""
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; fast.dispatch knows {QUANTITIES}")
    if not enabled():
        return None
    compiled = khat_numba.enabled(like)
    if quantity == "k_hat":
        return _k_hat_numba if compiled else khat_torch.bin_mean_and_grads
    if quantity == "k_hat_squared_error":
        return _k_hat_squared_error_numba if compiled else None
    if quantity == "receiver_lse":
        return receiver.mixture_lse
    return receiver.mixture_lse_fixed


def backend(quantity: str, like: torch.Tensor) -> str:
    """A name for what `dispatch` picks, for logs and benchmark tables."""
    fn = dispatch(quantity, like)
    if fn is None:
        return "reference O(K) sum"
    return {_k_hat_numba: "numba kernel", _k_hat_squared_error_numba: "numba kernel",
            khat_torch.bin_mean_and_grads: "torch routes", receiver.mixture_lse: "fused receiver",
            receiver.mixture_lse_fixed: "shared-p_O matmul"}[fn]  # fmt: skip


__all__ = ["QUANTITIES", "backend", "bounds", "dispatch", "enabled", "khat_numba", "khat_torch", "receiver"]
