"""The one place where per-example nats become reported units.

Every method reports per-example nats summed over the example's D dimensions (the contract in
suite/methods.py). Tables, plots and CI convert here, and only here:

  nats/dim     = nats / D
  bits/dim     = nats / (D ln 2)
  BPC          = bits/dim of a character sequence (D = number of characters)
  nats/image   = nats per example (MNIST, the BFN paper's unit)
  bits/seq     = nats / ln 2 per example (Sohl-Dickstein's heartbeat)
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)

#: unit name -> (nats per example) -> unit, given D
UNITS = ("nats", "nats/dim", "bits/dim", "BPC", "nats/image", "bits", "bits/seq")


def _per_dim(D: int) -> float:
    if D < 1:
        raise ValueError(f"number of dimensions D must be >= 1, got {D}")
    return 1.0 / D


def nats_to(value, unit: str, D: int):
    """Convert per-example nats (a float, array or tensor) to `unit` for examples of D dimensions.

    Linear, so it applies unchanged to a mean and to its standard error.
    """
    if unit in ("nats", "nats/image"):
        return value * 1.0
    if unit == "nats/dim":
        return value * _per_dim(D)
    if unit in ("bits/dim", "BPC"):
        return value * (_per_dim(D) / LN2)
    if unit in ("bits", "bits/seq"):
        return value / LN2
    raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}")


def to_nats(value, unit: str, D: int):
    """Inverse of `nats_to`: a value in `unit` back to per-example nats."""
    return value / nats_to(1.0, unit, D)


def convert(value, from_unit: str, to_unit: str, D: int):
    return nats_to(to_nats(value, from_unit, D), to_unit, D)


def default_unit(dataset_kind: str, dataset_name: str) -> str:
    """The unit the literature reports for a data set (BFN paper: MNIST nats/image, CIFAR bits/dim, text BPC)."""
    name = dataset_name.lower()
    if "binarized_mnist" in name or "mnist_embedded_binarized" in name or "mnist_mixture_binarized" in name:
        return "nats/image"
    if "heartbeat" in name:
        return "bits/seq"
    if dataset_kind == "discrete" and ("text" in name):
        return "BPC"
    if dataset_kind == "continuous":
        return "bits"
    return "bits/dim"


def mean_and_stderr(values) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof=1) of independent estimates; stderr is nan for one value."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_and_stderr of no values")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se
