"""DDPM noise schedules and the closed-form tables of the bound, in float64 (MATH.md s.8).

Betas follow diffusers' `DDPMScheduler` definitions (`linear`: linspace(beta_start, beta_end, T);
`squaredcos_cap_v2` = cosine: beta_t = min(1 - abar(t/T)/abar((t-1)/T), 0.999), abar(s) = cos^2((s + 0.008)/1.008
pi/2)), recomputed here in float64. diffusers keeps float32 tables and clamps the step-1 posterior variance to
1e-20; we keep beta~_1 = 0 exactly and, as improved-diffusion does, give step 1 the variance beta~_2.

Steps are 1-based as in the papers: t = 1..T, abar_0 = 1. Respacing (improved-diffusion's
`space_timesteps`) keeps a sub-sequence S of 1..T and re-derives betas from abar at the kept steps, so the
respaced chain has the same marginals q(x_t | x_0) at every kept step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "squaredcos_cap_v2")
F64 = torch.float64


def _cosine_abar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(
    schedule: str,
    T: int,
    beta_start: float | None = None,
    beta_end: float | None = None,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """beta_1..beta_T in float64 (MATH.md s.8, schedules).

    linear: diffusers' linspace(beta_start, beta_end, T); the defaults are improved-diffusion's
    (1e-4, 0.02) x 1000/T, so that T = 1000 gives DDPM's schedule and other T keep abar_T about the same.
    cosine (= diffusers' squaredcos_cap_v2): Nichol & Dhariwal 2021, Eq. 17, betas clipped at max_beta.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of diffusion steps T must be an integer >= 1, got {T!r}")
    if schedule == "linear":
        scale = 1000.0 / T
        b0 = 1e-4 * scale if beta_start is None else float(beta_start)
        b1 = 0.02 * scale if beta_end is None else float(beta_end)
        if not (0.0 < b0 < 1.0 and 0.0 < b1 < 1.0):
            raise ValueError(
                f"linear schedule needs 0 < beta_start, beta_end < 1, got ({b0}, {b1}) for T = {T}; the default "
                f"(1e-4, 0.02) x 1000/T exceeds 1 for T < 21: pass beta_start/beta_end or use schedule='cosine'"
            )
        return torch.linspace(b0, b1, T, dtype=F64)
    if schedule in ("cosine", "squaredcos_cap_v2"):
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
        b = [min(1 - _cosine_abar((i + 1) / T) / _cosine_abar(i / T), max_beta) for i in range(T)]
        return torch.tensor(b, dtype=F64)
    raise ValueError(f"unknown beta schedule {schedule!r}; use one of {SCHEDULES}")


def spaced_steps(T: int, n: int) -> list[int]:
    """n of the steps 1..T, evenly spaced, always keeping t = 1 (the decoder) and t = T (the prior).

    improved-diffusion's `space_timesteps(T, [n])`: 0-based round(i (T - 1)/(n - 1)) with Python's round (half to
    even; the steps stay distinct as the stride is >= 1). n = 1 keeps only t = T (prior and decoder meet there).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n!r}")
    if n > T:
        raise ValueError(f"n_steps = {n} exceeds the T = {T} steps the model was trained with; use n_steps <= {T}")
    if n == 1:
        return [T]
    stride = (T - 1) / (n - 1)
    return [1 + round(i * stride) for i in range(n)]


@dataclass
class Tables:
    """Closed-form float64 tables for a chain of n steps; index i holds step t = i + 1."""

    steps: torch.Tensor  # (n,) the original step of each kept step, in 1..T (network time = steps / T)
    T: int  # the trained grid's length
    betas: torch.Tensor
    alphas: torch.Tensor  # 1 - beta_t, kept separately so that beta_t -> 1 loses no digits of alpha_t
    abar: torch.Tensor  # alphas_cumprod, abar_t
    abar_prev: torch.Tensor  # abar_{t-1}, abar_0 = 1
    one_m_abar: torch.Tensor  # 1 - abar_t, computed without cancellation
    post_var: torch.Tensor  # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t; beta~_1 = 0 exactly
    log_post_var_clipped: torch.Tensor  # ln beta~_t, with ln beta~_2 at t = 1 (improved-diffusion)
    log_betas_large: torch.Tensor  # ln of the `fixed_large` variance: beta_t, with beta~_2 at t = 1
    c1: torch.Tensor  # posterior mean coefficient of x_0: beta_t sqrt(abar_{t-1}) / (1 - abar_t)
    c2: torch.Tensor  # posterior mean coefficient of x_t: (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)

    @property
    def n(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor, steps: torch.Tensor | None = None, T: int | None = None) -> Tables:
        """All tables from beta_1..beta_n (MATH.md s.8: mu~_t, c1, c2, beta~_t)."""
        betas = betas.to(F64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"every beta_t must lie in (0, 1); got min {betas.min().item()}, max {betas.max().item()}")
        n = betas.numel()
        steps = torch.arange(1, n + 1) if steps is None else steps.long()
        log_abar = torch.cumsum(torch.log1p(-betas), 0)
        return cls._build(betas, 1.0 - betas, torch.exp(log_abar), -torch.expm1(log_abar), steps, T or n)

    @classmethod
    def _build(cls, betas, alphas, abar, one_m_abar, steps, T) -> Tables:
        n = betas.numel()
        abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
        one_m_prev = torch.cat([torch.zeros(1, dtype=F64), one_m_abar[:-1]])
        post_var = one_m_prev / one_m_abar * betas
        # step 1's posterior variance is 0: both fixed variances use beta~_2 there (beta_1 if n = 1)
        v1 = post_var[1] if n > 1 else betas[0]
        log_post = torch.log(torch.cat([v1.reshape(1), post_var[1:]]))
        log_large = torch.log(torch.cat([v1.reshape(1), betas[1:]]))
        c1 = betas * abar_prev.sqrt() / one_m_abar
        c2 = one_m_prev * alphas.sqrt() / one_m_abar
        return cls(steps, T, betas, alphas, abar, abar_prev, one_m_abar, post_var, log_post, log_large, c1, c2)

    def respace(self, n: int) -> Tables:
        """The chain on n kept steps of this grid, composed kernels: beta'_i = 1 - abar_{s_i}/abar_{s_{i-1}}."""
        if n == self.n:
            return self
        keep = torch.tensor(spaced_steps(self.n, n)) - 1
        log_abar = torch.log(self.abar[keep])
        log_prev = torch.cat([torch.zeros(1, dtype=F64), log_abar[:-1]])
        betas = -torch.expm1(log_abar - log_prev)  # 1 - abar_s / abar_prev, exact for tiny beta'
        alphas = torch.exp(log_abar - log_prev)  # exact for beta' -> 1
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"respacing to {n} steps gives betas outside (0, 1); the schedule's abar must decrease")
        # keep abar and 1 - abar from the full grid: recomputing them from beta' would lose digits
        return Tables._build(betas, alphas, self.abar[keep], self.one_m_abar[keep], self.steps[keep], self.T)

    def to(self, device: torch.device | str) -> Tables:
        return Tables(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})
