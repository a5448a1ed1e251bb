"""The one contract every generative model meets, and the registry of methods.

A method is a `torch.nn.Module` that owns its network and exposes, per example and in nats
summed over the example's D dimensions:

  loss(x, n_steps=None) -> Tensor[B]   the training objective
  nll(x, n_steps=None)  -> Tensor[B]   one Monte-Carlo draw of an upper bound on -ln p(x):
                                       BFN: L^n (or L^inf) + L^r; diffusion: every term of its bound
  bound_terms(x, n_steps=None) -> dict[str, Tensor[B]]
                                       the same draw as `nll`, by named term: sum(values) == nll on the same
                                       random numbers (same torch seed, or the same `generator` where taken)
  sample(num, n_steps, generator=None) -> Tensor   data-space samples, shaped (num, *spec.shape)

and declares what the harness (suite/evaluate.py, suite/plots.py, the checkpoints) reads:

  continuous_time: bool      True: n_steps=None is the continuous-time bound and any n_steps >= 1 is allowed.
                             False: a discrete-time model; n_steps=None means its trained grid of num_steps
                             steps and n_steps <= num_steps evaluates on a sub-grid of it
  num_steps: int | None      the trained discrete-time grid's length T; None exactly when continuous_time
  registered_name: str       the name `build_method` built it under ("" when the class was built directly)

`n_steps` is the number of steps n of the discrete-time bound (None: see continuous_time). Methods that
also compute their n-step bound term by term (n network passes instead of one) name that the *full*
bound, with the same signature: `full_bound_terms(x, n_steps=None) -> dict[str, Tensor[B]]` (every step's
term, summed over steps; its keys are those of `bound_terms`) and `full_bound(x, n_steps=None) -> Tensor[B]`,
and list the steps' terms with `step_terms(x, n_steps=None) -> Tensor[B, n]` (column j - 1 is step j's term,
j = 1 the step next to the data; the prior and any separate reconstruction term are not columns). Methods
that draw their time variable offer `t_sampling` = "iid" or "stratified" (suite/timesteps.py).

`x` is a batch in the data set's value space (see suite/data/base.py). Evaluators, tables, plots and
CI see only this contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from suite.data.base import DataSpec


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (oracle "networks" in tests may have neither; then CPU)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class Method(nn.Module):
    """Base class: subclasses implement `loss`, `nll` and `sample` (and `bound_terms` for a finer breakdown)."""

    #: the class's own name (plots' colours, error messages); the registry's name is `registered_name`
    name: str = "method"
    #: True: `nll(x, None)` is the continuous-time bound and every n_steps >= 1 is defined. False: a
    #: discrete-time model, whose n_steps=None is its trained grid of `num_steps` steps (n_steps <= num_steps)
    continuous_time: bool = True
    #: the name `build_method` built this method under; "" for a method built from its class directly
    registered_name: str = ""

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

    @property
    def num_steps(self) -> int | None:
        """The trained discrete-time grid's length T (n_steps=None evaluates on it); None for continuous time.

        Discrete-time methods (continuous_time = False) override this; None exactly when continuous_time."""
        return None

    def bound_terms(self, x: torch.Tensor, n_steps: int | None = None) -> dict[str, torch.Tensor]:
        """One Monte-Carlo draw of the NLL bound by named term, each Tensor[B] in nats per example, whose sum is
        `nll(x, n_steps)` on the same random numbers. This default has one term, "nll"; methods whose bound has
        named parts (prior, diffusion, reconstruction...) override it."""
        return {"nll": self.nll(x, n_steps)}

    @property
    def label(self) -> str:
        """The name results and figures show: `registered_name`, else the class's `name`."""
        return self.registered_name or self.name

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
        return module_device(self)


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
    method = _METHODS[name](spec, **kwargs)
    method.registered_name = name
    return method


def _import_all() -> None:
    import importlib

    for mod in ("suite.bfn", "baselines"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a package not yet built is simply absent
            if e.name != mod:
                raise
