"""A tiny method and data set for harness tests (training loop, checkpoints, DDP, evaluation).

The method is a diagonal Gaussian after a linear map, with optional input noise so that the RNG state
matters, and an optional NaN from a given call on.
"""

import math

import torch

from suite.data import register
from suite.data.base import Dataset, DataSpec
from suite.methods import Method, register_method


class Blob(Dataset):
    def __init__(self, n=64, dim=3):
        self.spec = DataSpec("_test_blob", "continuous", (dim,), split_sizes={"train": n, "val": 16, "test": 40})
        g = torch.Generator().manual_seed(1)
        self._x = {s: 2.0 + 0.5 * torch.randn(k, dim, generator=g) for s, k in self.spec.split_sizes.items()}

    def examples(self, split):
        return self._x[split]


class Gauss(Method):
    name = "_test_gauss"

    def __init__(self, spec, backbone=None, backbone_kwargs=None, poison_at=None, noise=0.01):
        super().__init__(spec)
        self.mu = torch.nn.Parameter(torch.zeros(spec.shape))
        self.log_sigma = torch.nn.Parameter(torch.zeros(spec.shape))
        self.proj = torch.nn.Linear(spec.ndim, spec.ndim)  # a matrix, so weight decay applies somewhere
        self.poison_at, self.noise, self.calls = poison_at, noise, 0

    def loss(self, x, n_steps=None):
        self.calls += 1
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        z = (self.proj(x) - self.mu) / self.log_sigma.exp()
        out = (0.5 * z**2 + self.log_sigma + 0.5 * math.log(2 * math.pi)).sum(-1)
        if self.poison_at is not None and self.calls >= self.poison_at:
            out = out * float("nan")
        return out

    nll = loss

    def sample(self, num, n_steps, generator=None):
        return self.mu + self.log_sigma.exp() * torch.randn(num, *self.spec.shape, generator=generator)


try:
    register("_test_blob")(lambda data_dir, **kw: Blob(**kw))
    register_method("_test_gauss")(Gauss)
except ValueError:  # already registered in this process
    pass
