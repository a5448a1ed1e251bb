"""What the three BFN variants share: the Method contract, time sampling and the sampler hooks.

A variant (continuous.py, discretised.py, discrete.py) provides, in the paper's terms (MATH.md s.2):

  loss_cts(x, t, ...)        L^inf integrand for explicit times t (B,) in [0, 1]; noise optional
  loss_nstep(x, i, n, ...)   n KL(p_S || p_R) at step i (B,) in 1..n
  recon(x, ...)              -ln p_O(x | theta; 1), theta ~ p_F(. | x; 1)
  prior / output / sample_output / sender / update / final_sample   the n-step sampler's pieces

The public loss / nll draw t (or i) and the flow's noise themselves; tests call the pieces with explicit
values to compare estimators on common random numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from suite import timesteps
from suite.bfn.schedules import check_n_steps, from_reference_config
from suite.methods import Method
from suite.nets import build_net, default_backbone  # noqa: F401 - one home; the variants import them from here

Tensor = torch.Tensor
FINAL = ("sample", "mode")


def check_final(final: str) -> str:
    if final not in FINAL:
        raise ValueError(
            f"final must be 'sample' (the paper: draw x from p_O at t = 1) or 'mode' (the reference code: "
            f"its most probable value), got {final!r}"
        )
    return final


def check_t_min(t_min: float) -> float:
    if not 0.0 <= float(t_min) < 1.0:
        raise ValueError(f"t_min must lie in [0, 1) (below it x-hat = 0; the reference uses 1e-6), got {t_min!r}")
    return float(t_min)


def paper_hparams(cfg: dict) -> dict:
    """Hyperparameters by the paper's names; the reference configs' names are converted (schedules.py)."""
    ref = {k: cfg.pop(k) for k in ("min_variance", "max_sqrt_beta") if k in cfg}
    converted = from_reference_config(**ref)
    clash = sorted(set(converted) & set(cfg))
    if clash:
        raise ValueError(f"give either the paper's {clash} or the reference config's name for it, not both")
    return {**cfg, **converted}


class BFN(Method):
    """Base of the three variants: draws times, runs the network, sums per-example terms."""

    continuous_time = True

    def __init__(self, spec, net: nn.Module, final: str = "sample"):
        super().__init__(spec)
        if not isinstance(net, nn.Module):
            raise TypeError(f"{self.name}: net must be a torch.nn.Module with forward(h, t), got {type(net).__name__}")
        self.net = net
        self.final = check_final(final)

    # --- helpers -----------------------------------------------------------------------------------
    def bcast(self, v: Tensor) -> Tensor:
        """(B,) -> (B, 1, ..., 1), broadcastable against a batch of examples."""
        return v.reshape(v.shape[0], *([1] * len(self.spec.shape)))

    def per_example(self, v: Tensor) -> Tensor:
        """Sum over an example's D dimensions: (B, *shape) -> (B,)."""
        return v.reshape(v.shape[0], -1).sum(1)

    def run_net(self, h: Tensor, t: Tensor) -> Tensor:
        """The network under whatever autocast is active, its output cast to float32 for the loss."""
        return self.net(h, t.to(torch.float32)).float()

    @staticmethod
    def draw_t(B: int, device) -> Tensor:
        """t ~ U(0, 1) through suite.timesteps, so the evaluator's systematic estimator reaches BFN too."""
        return timesteps.draw_t(B, device=device, dtype=torch.float64)

    @staticmethod
    def draw_i(B: int, n: int, device) -> Tensor:
        return timesteps.draw_step(B, n, device=device)

    # --- the contract ------------------------------------------------------------------------------
    def loss(self, x: Tensor, n_steps: int | None = None) -> Tensor:
        """L^inf (n_steps=None) or L^n per example, in nats summed over D (MATH.md s.2)."""
        self.check_batch(x)
        if n_steps is None:
            return self.loss_cts(x, self.draw_t(x.shape[0], x.device))
        n = check_n_steps(n_steps)
        return self.loss_nstep(x, self.draw_i(x.shape[0], n, x.device), n)

    def nll(self, x: Tensor, n_steps: int | None = None) -> Tensor:
        """One sample of L^n + L^r (or L^inf + L^r) >= -ln p(x), independent theta draws (MATH.md s.2)."""
        return self.loss(x, n_steps) + self.recon(x)

    def bound_terms(self, x: Tensor, n_steps: int | None = None) -> dict[str, Tensor]:
        """nll by term, on the same draws in the same order: "diffusion" = L^n (or L^inf), "recon" = L^r."""
        return {"diffusion": self.loss(x, n_steps), "recon": self.recon(x)}

    def sample(self, num: int, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
        from suite.bfn.sampler import sample

        return sample(self, num, n_steps, generator)

    # --- implemented by the variants ------------------------------------------------------------------
    def loss_cts(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def loss_nstep(self, x: Tensor, i: Tensor, n: int) -> Tensor:
        raise NotImplementedError

    def recon(self, x: Tensor) -> Tensor:
        raise NotImplementedError
