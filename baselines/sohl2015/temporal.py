"""Temporal basis functions of Sohl-Dickstein et al. 2015 (App. D.2.4; MATH.md s.7 "Time basis").

The network sees x^t and emits J coefficients per output and dimension; the time dependence enters only through
J normalised Gaussian bumps g_j(t) = exp(-(t - tau_j)^2/(2 w^2)) / sum_k exp(-(t - tau_k)^2/(2 w^2)), tau_j evenly
spaced over the trajectory and w half their spacing (as in the public code's generate_temporal_basis).
"""

from __future__ import annotations

import torch


def temporal_basis(T: int, J: int) -> torch.Tensor:
    """g_j(t) for t = 1..T (rows) and j = 1..J (columns), float64, rows summing to 1."""
    if not isinstance(J, int) or isinstance(J, bool) or J < 1:
        raise ValueError(f"the number of temporal basis functions J must be an integer >= 1, got {J!r}")
    if J == 1:
        return torch.ones(T, 1, dtype=torch.float64)
    t = torch.linspace(-1, 1, T, dtype=torch.float64) if T > 1 else torch.zeros(1, dtype=torch.float64)
    tau = torch.linspace(-1, 1, J, dtype=torch.float64)
    w = (tau[1] - tau[0]) / 2
    logits = -((t[:, None] - tau[None, :]) ** 2) / (2 * w**2)
    return torch.softmax(logits, dim=1)  # = the normalised bumps, without underflow far from every centre


def temporal_readout(y: torch.Tensor, g: torch.Tensor, n_out: int) -> torch.Tensor:
    """z_k = sum_j y_{k,j} g_j(t): y (B, *shape, n_out * J), g (B, J) -> (B, *shape, n_out), float32.

    The network's output features are read as n_out groups of J coefficients (k-major), cast up to float32
    so the bound is computed in float32 under autocast.
    """
    B, J = g.shape
    if y.shape[-1] != n_out * J:
        raise ValueError(
            f"network emits {y.shape[-1]} features per dimension; the readout needs {n_out} x J = {n_out * J}"
        )
    y = y.float().reshape(*y.shape[:-1], n_out, J)
    g = g.float().reshape(B, *([1] * (y.dim() - 3)), 1, J)
    return (y * g).sum(-1)
