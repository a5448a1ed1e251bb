"""Pieces shared by the Gaussian image baselines (DDPM, VDM): data checks, t sampling, the network call."""

from __future__ import annotations

import torch
from torch import nn

from suite.data.base import DataSpec
from suite.timesteps import uniform_times  # noqa: F401  (re-exported for the methods)

T_SAMPLING = ("uniform", "stratified")


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
    k = torch.round(((xd + 1) * K - 1) / 2)
    off_grid = float((xd - (2 * k + 1) / K + 1).abs().max()) > 1e-4 if x.numel() else False
    if x.numel() and (bool((k < 0).any()) or bool((k > K - 1).any()) or off_grid):
        raise ValueError(
            f"{who}: x must hold the {K} bin centres (2k + 1)/{K} - 1 in [-1, 1], got values in "
            f"[{float(xd.min()):.4g}, {float(xd.max()):.4g}]; map the data with the data set's value map first"
        )
    return k.long()


def check_t_sampling(t_sampling: str, who: str) -> str:
    if t_sampling not in T_SAMPLING:
        raise ValueError(f"{who}: t_sampling must be one of {T_SAMPLING}, got {t_sampling!r}")
    return t_sampling


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def expand_to(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def build_net(spec: DataSpec, backbone: str, backbone_kwargs: dict | None, in_features: int, out_features: int):
    """A shared backbone from suite.nets (imported here so tests with a local net need no suite.nets)."""
    from suite.nets import build_backbone

    return build_backbone(backbone, tuple(spec.shape), in_features, out_features, **(backbone_kwargs or {}))


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


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (oracle "networks" in tests may have neither)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
