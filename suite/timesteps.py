"""Where every method draws its time variable, so the evaluator can lower the variance for all of them.

Methods call `draw_t(B, device)` for a continuous t ~ U(0, 1) per example and `draw_step(B, n, device)`
for a step i ~ U{1..n}. By default these are plain i.i.d. draws from torch's global RNG. Inside
`systematic(u, r, R)` the evaluator supplies, per example, a fixed u ~ U(0, 1) and the repeat index r
of R: t = (u + r/R) mod 1. Over the R repeats every example then sees R evenly spaced times (systematic
sampling of the t integral), which removes most of the between-repeat variance of the estimate while
each repeat stays an unbiased one-sample estimator (t is still marginally uniform).

Methods with a `t_sampling` option name their per-batch draw with one vocabulary, T_SAMPLING:
  "iid"         every example's t independent (through `draw_t`, so `systematic` applies);
  "stratified"  one shared offset, u_b = (u + b/B) mod 1 (VDM's low-discrepancy t), still U[0, 1) each.
The old spelling "uniform" (DDPM, VDM) is read as "iid" with a DeprecationWarning (`check_t_sampling`).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager

import torch

_local = threading.local()

T_SAMPLING = ("iid", "stratified")
_OLD_T_SAMPLING = {"uniform": "iid"}  # DDPM's and VDM's former name of the i.i.d. draw


def check_t_sampling(t_sampling: str, who: str) -> str:
    """The t_sampling value in this module's vocabulary, or a clear error; old spellings warn and are mapped."""
    if t_sampling in _OLD_T_SAMPLING:
        new = _OLD_T_SAMPLING[t_sampling]
        warnings.warn(f"{who}: t_sampling={t_sampling!r} is now spelt {new!r} (one vocabulary for every method: "
                      f"{T_SAMPLING}); reading it as {new!r}", DeprecationWarning, stacklevel=3)
        return new
    if t_sampling not in T_SAMPLING:
        raise ValueError(f"{who}: t_sampling must be one of {T_SAMPLING}, got {t_sampling!r}")
    return t_sampling


@contextmanager
def systematic(u: torch.Tensor, r: int, R: int):
    """Within this block, the next draw of B times uses t = (u + r/R) mod 1 (u: one value per example)."""
    if not 0 <= r < R:
        raise ValueError(f"repeat index r={r} must be in [0, {R})")
    prev = getattr(_local, "u", None)
    _local.u = torch.remainder(u.double() + r / R, 1.0)
    try:
        yield
    finally:
        _local.u = prev


def _override(B: int):
    u = getattr(_local, "u", None)
    if u is None:
        return None
    if u.shape[0] != B:
        raise ValueError(f"systematic t was prepared for {u.shape[0]} examples, the method asked for {B}")
    return u


def draw_t(B: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """t ~ U(0, 1), one per example."""
    u = _override(B)
    if u is None:
        return torch.rand(B, device=device, dtype=dtype)
    return u.to(device=device, dtype=dtype)


def draw_step(B: int, n: int, device=None) -> torch.Tensor:
    """i ~ U{1..n}, one per example (int64); under `systematic`, i = floor(t n) + 1."""
    u = _override(B)
    if u is None:
        return torch.randint(1, n + 1, (B,), device=device)
    return (torch.floor(u * n).long().clamp_(0, n - 1) + 1).to(device)


def uniform_times(B: int, stratified: bool = False, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """u in [0, 1) per example, float64, for methods that offer a batch-stratified option.

    Stratified: u_b = (u + b/B) mod 1 (VDM's low-discrepancy t): the batch covers [0, 1) evenly and each
    u_b is still U[0, 1), so every per-example estimate stays unbiased. Otherwise `draw_t` (so the
    evaluator's systematic estimator applies), or plain draws from `generator` when one is given.
    """
    if stratified:
        u0 = torch.rand((), generator=generator, dtype=torch.float64, device=device)
        return torch.remainder(u0 + torch.arange(B, dtype=torch.float64, device=device) / B, 1.0)
    if generator is None:
        return draw_t(B, device=device, dtype=torch.float64)
    return torch.rand(B, generator=generator, dtype=torch.float64, device=device)


def sample_steps(B: int, n: int, t_sampling: str = "iid", device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """j ~ U{1..n} per example (int64), j = floor(n u) + 1 with u from `uniform_times` (t_sampling "iid" or
    "stratified"): the step draw of the discrete-time bounds' single-step estimators."""
    u = uniform_times(B, stratified=t_sampling == "stratified", device=device, generator=generator)
    return (u * n).long().clamp_(0, n - 1) + 1
