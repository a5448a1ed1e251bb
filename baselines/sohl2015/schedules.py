"""Forward-process schedules and step grids of Sohl-Dickstein et al. 2015 (float64 tables).

Time runs t = 1..T; tables are indexed by t with abar[0] = 1 (the data). A grid is a strictly increasing
sub-sequence s_1 < ... < s_n = T of 1..T; step i jumps s_{i-1} -> s_i (s_0 = 0) with the composed kernel
beta'_i = 1 - abar_{s_i}/abar_{s_{i-1}} (MATH.md s.7; the marginals q(x^{s_i}|x^0) are those of the full chain).
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.sohl2015.temporal import temporal_basis

BETA_MIN, BETA_MAX = 1e-6, 1 - 1e-5  # the public code's clamp on beta_t


def check_T(T: int) -> int:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"trajectory length T must be an integer >= 1, got {T!r}")
    return T


def binomial_betas(T: int) -> torch.Tensor:
    """beta_t = 1/(T - t + 1), t = 1..T (paper Table App.1): abar_t = (T - t)/T, so beta_T = 1 erases everything."""
    t = torch.arange(1, check_T(T) + 1, dtype=torch.float64)
    return 1.0 / (T - t + 1)


def _constant_fraction_base(T: int) -> torch.Tensor:
    return 1.0 / torch.linspace(float(check_T(T)), 2.0, T, dtype=torch.float64)


def constant_fraction_betas(T: int) -> torch.Tensor:
    """The public code's baseline 1/linspace(T, 2, T): each step erases ~1/T of the original signal variance
    (abar_t falls about linearly; ~1/T of it is left at t = T), mapped into [1e-6, 1 - 1e-5] as the code does."""
    return BETA_MIN + _constant_fraction_base(T) * (BETA_MAX - BETA_MIN)


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t}(1 - beta_s), with abar_0 = 1 prepended: shape (T + 1,)."""
    one = torch.ones(1, dtype=betas.dtype, device=betas.device)
    return torch.cat([one, torch.cumprod(1 - betas, 0)])


def step_grid(T: int, n_steps: int | None) -> torch.Tensor:
    """Grid times s_1..s_n (int64): the full 1..T when n_steps is None; else s_1 = 1 (the fixed first step keeps
    its small beta_1), s_n = T and evenly spaced between (round half up keeps them distinct; n = T gives 1..T)."""
    if n_steps is None:
        return torch.arange(1, T + 1)
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or not 1 <= n_steps <= T:
        raise ValueError(
            f"n_steps must be an integer in 1..T = 1..{T} (a sub-sequence of the trained grid) or None, got {n_steps!r}"
        )
    if n_steps == 1:
        return torch.tensor([T])
    s = torch.floor(torch.linspace(1.0, float(T), n_steps, dtype=torch.float64) + 0.5).long()
    assert bool((s[1:] > s[:-1]).all())  # spacing (T-1)/(n-1) >= 1 and round-half-up keep them distinct
    return s


class GaussianBetas(nn.Module):
    """The Gaussian diffusion's beta_1..T: beta_1 fixed small; beta_2..T either fixed (constant fraction
    erased per step) or learned by gradient on K (paper s.2.4.1; "frozen noise" = reparameterised x^t).

    Learned: beta_t = lo + sigmoid(logit(base_t) + sum_j c_j g_j(t)) (hi - lo) for t >= 2, with the same J bump
    functions as the reverse kernel's readout (the public code's beta_perturb_coefficients); c = 0 at init, so it
    starts from the fixed schedule.
    """

    def __init__(self, T: int, beta1: float = 1e-3, learned: bool = False, n_basis: int = 10):
        super().__init__()
        check_T(T)
        if not 0 < beta1 < 1:
            raise ValueError(f"beta1 must lie in (0, 1) (a small first-step variance, e.g. 1e-3), got {beta1!r}")
        self.T, self.beta1, self.learned = T, float(beta1), bool(learned)
        self.register_buffer("base", _constant_fraction_base(T), persistent=False)
        self.register_buffer("basis", temporal_basis(T, n_basis), persistent=False)
        # float32 parameter (optimisers and DDP like one dtype); the table is built in float64
        self.coef = nn.Parameter(torch.zeros(n_basis)) if learned else None

    def forward(self) -> torch.Tensor:
        """beta_1..T, float64, shape (T,)."""
        base = self.base.double()
        if self.coef is not None:  # at c = 0 this is exactly the fixed schedule
            base = torch.sigmoid(torch.logit(base.clamp(max=1 - 1e-12)) + self.basis.double() @ self.coef.double())
        betas = BETA_MIN + base * (BETA_MAX - BETA_MIN)
        first = torch.full((1,), self.beta1, dtype=torch.float64, device=betas.device)
        return torch.cat([first, betas[1:]])
