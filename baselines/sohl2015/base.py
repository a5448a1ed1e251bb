"""What the Gaussian and binomial diffusions of Sohl-Dickstein et al. 2015 share: the step grid, the bound K of
Eq. 14 (term by term over all steps, or the single-random-step estimator), its reports, and the sampling loop.

Bound (MATH.md s.7, Eq. 14), over a grid s_1 < ... < s_n = T (s_0 = 0 is the data, s_1 = 1 unless n = 1):

  -K = sum_{i=2..n} E_q KL(q(x^{s_{i-1}}|x^{s_i}, x^0) || p(x^{s_{i-1}}|x^{s_i}))      "kl"
       + H_q(X^{s_1}|X^0) - H_q(X^T|X^0) + H_p(X^T)                                     entropies
       + (E_q[-ln pi(x^T)] - H_p(X^T)) - E_q[ln pi(x^0) - ln pi(x^{s_1})]                corrections

The first reverse step is fixed to the time reversal of the forward kernel under pi (App. B.2), which
contributes the last correction; both corrections vanish in expectation on unit-variance data (or data mean =
p1) and make K a bound for every x^0 otherwise. They and the entropies are closed forms of x^0; only "kl" is
estimated: all n - 1 terms (n - 1 network passes per example), or (n - 1) KL_i at one i ~ U{2..n} per example.
Every term is returned as its contribution, in nats per example, to the NLL bound, so their sum is `nll`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.sohl2015.schedules import alpha_bar, check_T, step_grid
from baselines.sohl2015.temporal import temporal_basis, temporal_readout
from suite import timesteps
from suite.data.base import DataSpec
from suite.methods import Method

LN2 = math.log(2.0)
DATA_TERMS = ("log_scale", "dequantisation")  # data-space terms: not part of K


class SohlDiffusion(Method):
    """Shared machinery; subclasses define the kernels (see the `_` hooks below)."""

    continuous_time = False  # n_steps=None means the trained grid of T steps
    n_readout: int  # network outputs per dimension per basis function

    def __init__(self, spec: DataSpec, net: nn.Module, T: int, n_basis: int, net_time_input: bool, max_batch: int):
        super().__init__(spec)
        self.T = check_T(T)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(
                f"max_batch (examples per network pass in the full bound) must be an integer >= 1, got {max_batch!r}"
            )
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"net must be a torch.nn.Module with the backbone signature net(h, t), got {type(net).__name__}"
            )
        self.net = net
        self.n_basis = n_basis
        self.net_time_input = bool(net_time_input)
        self.max_batch = max_batch
        self.register_buffer("basis", temporal_basis(T, n_basis), persistent=False)

    @property
    def num_steps(self) -> int:
        """The trained grid's T: n_steps=None evaluates on it, n_steps = n <= T on a sub-sequence of it."""
        return self.T

    # ---- hooks -------------------------------------------------------------------------------------------
    def betas(self) -> torch.Tensor:
        """beta_1..T, float64."""
        raise NotImplementedError

    def _to_model(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Data batch -> model-space x^0 (float32) and the data-space terms of the NLL bound."""
        raise NotImplementedError

    # ---- the network through the temporal basis ------------------------------------------------------------
    def readout(self, xt: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Network at grid times `times` (B,) in 1..T, mixed by the bumps g_j(t): (B, *shape, n_readout), float32."""
        B = xt.shape[0]
        t_in = (times.double() - 1) / max(self.T - 1, 1) if self.net_time_input else torch.zeros(B, dtype=torch.float64)
        out = self.net(self._net_input(xt).unsqueeze(-1), t_in.to(device=xt.device, dtype=xt.dtype))
        if tuple(out.shape[:-1]) != tuple(xt.shape):
            raise ValueError(
                f"network output shape {tuple(out.shape)} does not match (B, *data_shape, features) = "
                f"{tuple(xt.shape)} + (features,): check the backbone's data_shape"
            )
        g = self.basis.double()[times.to(self.basis.device) - 1]
        return temporal_readout(out, g.to(xt.device), self.n_readout)

    def _net_input(self, xt: torch.Tensor) -> torch.Tensor:
        return xt

    # ---- the bound ----------------------------------------------------------------------------------------
    def _grid(self, n_steps: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid times s_1..s_n (int64) and abar at s_0..s_n (float64, abar_{s_0} = 1)."""
        grid = step_grid(self.T, n_steps)
        abar = alpha_bar(self.betas())
        return grid.to(device), abar[torch.cat([torch.zeros(1, dtype=torch.long), grid]).to(abar.device)].to(device)

    def _kl(self, y: torch.Tensor, i: torch.Tensor, grid: torch.Tensor, ab: torch.Tensor, generator) -> torch.Tensor:
        """KL term of step i (per example, i in 2..n) at one draw x^{s_i} ~ q(.|x^0), summed over D: Tensor[B]."""
        shape = (-1,) + (1,) * (y.dim() - 1)
        a_prev, a_t = ab[i - 1].view(shape), ab[i].view(shape)
        xt = self._forward_sample(y, a_t, generator)
        q = self._posterior(y, xt, a_prev, a_t)
        p = self._reverse(xt, 1 - ab[i] / ab[i - 1], grid[i - 1])
        return self._kl_elementwise(q, p).flatten(1).sum(1)

    def _bound(
        self, x: torch.Tensor, n_steps: int | None, full: bool, generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        self.check_batch(x)
        y, data_terms = self._to_model(x, generator)
        grid, ab = self._grid(n_steps, y.device)
        n, B = len(grid), y.shape[0]
        if n < 2:
            kl = torch.zeros(B, device=y.device)
        elif full:  # all n - 1 steps, chunked so one network pass sees at most max_batch examples
            kl = torch.zeros(B, device=y.device)
            c = max(1, self.max_batch // B)
            for lo in range(2, n + 1, c):
                steps = torch.arange(lo, min(lo + c, n + 1), device=y.device)
                rep = y.repeat(len(steps), *([1] * (y.dim() - 1)))
                kl = kl + self._kl(rep, steps.repeat_interleave(B), grid, ab, generator).view(len(steps), B).sum(0)
        else:  # one step per example: unbiased for the sum, (n - 1) x one network pass
            if generator is None:  # through suite.timesteps, so the evaluator's systematic estimator applies
                i = timesteps.draw_step(B, n - 1, device=y.device) + 1
            else:
                i = torch.randint(2, n + 1, (B,), generator=generator, device=y.device)
            kl = (n - 1) * self._kl(y, i, grid, ab, generator)
        terms = {"kl": kl, **self._fixed_terms(y, 1 - ab[1], ab[n])}
        terms.update(data_terms)
        return {k: v.float() for k, v in terms.items()}, y

    def bound_terms(
        self, x: torch.Tensor, n_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """One draw of the NLL bound by term, per example in nats (Tensor[B] each), with the single-random-step
        estimator (n - 1) KL_i, i ~ U{2..n}, as "kl"; they sum to `nll`.

        n_steps: None or T = the trained grid; n < T = a sub-sequence with composed forward kernels.
        """
        return self._bound(x, n_steps, False, generator)[0]

    def full_bound_terms(
        self, x: torch.Tensor, n_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """As `bound_terms`, with all n - 1 KL terms computed (n - 1 network passes) instead of one; they sum to
        `full_bound`."""
        return self._bound(x, n_steps, True, generator)[0]

    def nll(
        self, x: torch.Tensor, n_steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One Monte-Carlo sample of the upper bound on -ln p(x), per example in nats (see the subclass for what
        p is: a discrete probability for discretised/discrete data, a density for continuous data)."""
        return sum(self.bound_terms(x, n_steps, generator).values())

    def full_bound(
        self, x: torch.Tensor, n_steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The bound with every KL term computed (n - 1 network passes per example), nats per example."""
        return sum(self.full_bound_terms(x, n_steps, generator).values())

    def loss(
        self, x: torch.Tensor, n_steps: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training objective: the single-random-step estimate of -K (= `nll`, whose extra terms are constants)."""
        return self.nll(x, n_steps, generator=generator)

    def report(
        self,
        x: torch.Tensor,
        n_steps: int | None = None,
        *,
        full: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The paper's Table 1 quantities per example: K and K - L_null in bits (model space), and the NLL bound."""
        terms, y = self._bound(x, n_steps, full, generator)
        K = -sum(v for k, v in terms.items() if k not in DATA_TERMS)
        L_null = self._log_null(y, x)
        return {
            "K_bits": K / LN2,
            "L_null_bits": L_null / LN2,
            "K_minus_L_null_bits": (K - L_null) / LN2,
            "nll_nats": sum(terms.values()),
        }

    # ---- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num: int, n_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling: x^T ~ pi, the learned steps i = n..2, then the fixed first step; data space."""
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"num (samples to draw) must be an integer >= 1, got {num!r}")
        dev = self.device
        grid, ab = self._grid(n_steps, dev)
        x = self._prior_sample(num, generator)
        for i in range(len(grid), 1, -1):
            times = grid[i - 1].expand(num)
            x = self._reverse_sample(self._reverse(x, (1 - ab[i] / ab[i - 1]).expand(num), times), generator)
        x = self._first_step_sample(x, 1 - ab[1], generator)
        return self._to_data(x)
