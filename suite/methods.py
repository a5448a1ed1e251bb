"""The one contract every generative model meets, and the registry of methods.

A method is a `torch.nn.Module` that owns its network and exposes, per example and in nats
summed over the example's D dimensions:

  loss(x, n_steps=None) -> Tensor[B]   the training objective; n_steps=None is continuous time
  nll(x, n_steps=None)  -> Tensor[B]   one Monte-Carlo sample of an upper bound on -ln p(x):
                                       BFN: L^n (or L^inf) + L^r; diffusion: every term of its bound
  sample(num, n_steps, generator=None) -> Tensor   data-space samples, shaped (num, *spec.shape)

`x` is a batch in the data set's value space (see suite/data/base.py). Evaluators, tables, plots and
CI see only this contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from suite.data.base import DataSpec


class Method(nn.Module):
    """Base class: subclasses implement `loss`, `nll` and `sample`."""

    name: str = "method"
    #: whether `nll(x, None)` (continuous time) is defined; discrete-time-only models set False
    continuous_time: bool = True

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """The training objective; `forward` so that DistributedDataParallel sees the call."""
        return self.loss(x, n_steps)

    def loss(self, x: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, x: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, num: int, n_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check_batch(self, x: torch.Tensor) -> None:
        """A clear error for a batch of the wrong shape or dtype."""
        if tuple(x.shape[1:]) != tuple(self.spec.shape):
            raise ValueError(
                f"{self.name}: batch shape {tuple(x.shape)} does not match data set {self.spec.name!r} "
                f"with example shape {self.spec.shape}; pass a batch shaped (B, {', '.join(map(str, self.spec.shape))})"
            )
        want_float = self.spec.kind != "discrete"
        if want_float != x.is_floating_point():
            need = "a floating-point tensor" if want_float else "an integer tensor of class indices"
            raise TypeError(f"{self.name}: {self.spec.kind} data needs {need}, got dtype {x.dtype}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


_METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str):
    def deco(factory):
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = factory
        return factory

    return deco


def method_names() -> list[str]:
    _import_all()
    return sorted(_METHODS)


def build_method(name: str, spec: DataSpec, **kwargs) -> Method:
    _import_all()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name](spec, **kwargs)


def _import_all() -> None:
    import importlib

    for mod in ("suite.bfn", "baselines"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a package not yet built is simply absent
            if e.name != mod:
                raise
