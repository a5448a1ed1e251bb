"""Pieces shared by the Gaussian image baselines (DDPM, VDM): data checks, the network call.

t sampling (`check_t_sampling`, `sample_steps`, `uniform_times`) lives in suite/timesteps.py, `build_net` in
suite/nets, `module_device` in suite/methods.py; they are re-exported here for the two methods.
"""

from __future__ import annotations

import torch
from torch import nn

from suite.data.base import DataSpec, bin_centres_from_index
from suite.methods import module_device  # noqa: F401  (re-exported for the methods)
from suite.nets import build_net  # noqa: F401
from suite.timesteps import T_SAMPLING, check_t_sampling, sample_steps, uniform_times  # noqa: F401


def check_discretised(spec: DataSpec, who: str) -> int:
    """K for a discretised data set (bin centres on [-1, 1]), or a clear error."""
    if spec.kind != "discretised":
        raise ValueError(
            f"{who} models discretised data (K bin centres on [-1, 1], e.g. images), but data set {spec.name!r} "
            f"is {spec.kind}; use a discretised data set (MNIST / CIFAR-10 with 256 or 16 bins)"
        )
    return int(spec.num_classes)


def check_bins(x: torch.Tensor, K: int, who: str) -> torch.Tensor:
    """Bin indices of x, checking that x holds K-bin centres (2k + 1)/K - 1 (a [0, 1] or 0..255 image would not)."""
    xd = x.detach().double()
    k = torch.round(((xd + 1) * K - 1) / 2)  # not clamped: an index outside 0..K-1 is the error reported below
    off_grid = float((xd - bin_centres_from_index(k, K).double()).abs().max()) > 1e-4 if x.numel() else False
    if x.numel() and (bool((k < 0).any()) or bool((k > K - 1).any()) or off_grid):
        raise ValueError(
            f"{who}: x must hold the {K} bin centres (2k + 1)/{K} - 1 in [-1, 1], got values in "
            f"[{float(xd.min()):.4g}, {float(xd.max()):.4g}]; map the data with the data set's value map first"
        )
    return k.long()


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def expand_to(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class NetCaller(nn.Module):
    """net(x[..., None], t) -> (B, *shape, out_features) in float32, with a shape check on the first call."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...], out_features: int, who: str):
        super().__init__()
        self.net, self.shape, self.out_features, self.who = net, tuple(shape), out_features, who
        self._checked = False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x.unsqueeze(-1), t.to(torch.float32))
        if not self._checked:
            want = (x.shape[0], *self.shape, self.out_features)
            if tuple(out.shape) != want:
                raise ValueError(
                    f"{self.who}: the network returned shape {tuple(out.shape)}, expected {want} "
                    f"(B, *data_shape, out_features); build it with out_features={self.out_features}"
                )
            self._checked = True
        return out.float()  # losses in float32 even under autocast

