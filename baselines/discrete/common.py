"""Pieces shared by the discrete diffusion baselines: input checks, Gumbel sampling, the network call, the factory.

Everything here is O(B D K) in memory: one-hot inputs and per-class logits, never a K x K matrix. t sampling
(`check_t_sampling`, `sample_steps`, `uniform_times`) lives in suite/timesteps.py, `build_net` in suite/nets,
`module_device` in suite/methods.py; they are re-exported here for the two methods.
"""

from __future__ import annotations

import torch
from torch import nn

from suite.data.base import DataSpec
from suite.methods import module_device  # noqa: F401  (re-exported for the methods)
from suite.nets import build_net
from suite.timesteps import T_SAMPLING, check_t_sampling, sample_steps, uniform_times  # noqa: F401


def check_spec(spec: DataSpec, who: str) -> int:
    """K for a discrete data set, or a clear error."""
    if spec.kind != "discrete":
        raise ValueError(
            f"{who} models discrete data (class indices), but data set {spec.name!r} is {spec.kind}; "
            f"use a discrete data set (text, binarised MNIST) or a method for {spec.kind} data"
        )
    K = int(spec.num_classes)
    if K < 2:
        raise ValueError(f"{who}: need K >= 2 classes, data set {spec.name!r} has {K}")
    return K


def check_values(x: torch.Tensor, K: int, who: str) -> None:
    """Class indices must lie in 0..K-1 (a mask or padding id would silently corrupt the bound)."""
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= K):
        raise ValueError(
            f"{who}: class indices must lie in 0..{K - 1}, got values in [{int(x.min())}, {int(x.max())}]; "
            f"map the data to K = {K} classes first"
        )


def gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from Cat(softmax(logits)) over the last axis (Gumbel-max trick), reproducible under a generator."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))  # clamps: u = 0 or u -> 1 would give inf
    return (logits.float() + g).argmax(-1)


def bernoulli(p: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean draws with per-example probability p (B,) broadcast over `shape` = (B, *S)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=p.device)
    return u < p.reshape(-1, *([1] * (len(shape) - 1)))


def expand_to(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def call_net(net: nn.Module, h: torch.Tensor, t: torch.Tensor, shape: tuple[int, ...], out_features: int, who: str):
    """net(h, t) with t as float32, checked to return (B, *data_shape, out_features), cast up to float32 (losses
    in float32 even under autocast)."""
    out = net(h, t.to(torch.float32))
    want = (h.shape[0], *shape, out_features)
    if tuple(out.shape) != want:
        raise ValueError(
            f"{who}: the network returned shape {tuple(out.shape)}, expected {want} (B, *data_shape, out_features); "
            f"build it with out_features={out_features}"
        )
    return out.float()



def build_discrete(cls, spec: DataSpec, backbone: str, backbone_kwargs: dict | None, net: nn.Module | None,
                   **hyperparameters):
    """The factory of both discrete baselines: `cls` (a Method whose network reads K + cls.extra_input_classes
    one-hot input features and returns K logits) on data set `spec`, with a shared backbone unless `net` is given."""
    K = check_spec(spec, cls.name)
    if net is None:
        net = build_net(spec, backbone, backbone_kwargs, K + cls.extra_input_classes, K)
    return cls(spec, net, **hyperparameters)
