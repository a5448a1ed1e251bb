"""Generated toy data (Sohl-Dickstein et al. 2015, Table 1): the swiss roll and the binary heartbeat.

Each split is a fixed-size set drawn once from (data_seed, split), so train/val/test are the same in every
run; the run seed only orders batches.

swiss_roll (continuous, shape (2,)): t ~ U[1.5 pi, 4.5 pi], raw point (t cos t, t sin t) + N(0, noise^2 I)
  (noise 0.5 in raw units by default; the paper does not state its noise), then standardised with the
  distribution's exact per-coordinate mean and standard deviation (closed form below), so every coordinate
  has mean 0 and variance 1 in distribution. Unit-variance data is what Sohl-Dickstein's Gaussian bound and its
  isotropic-Gaussian null model assume (MATH.md s.7). Truth: the density is the curve's uniform measure
  convolved with the noise, ln p(x) = ln (1/L) int N(x; c(t), s^2) dt over t (standardised units), a smooth 1-D
  integral computed by the trapezoid rule on 20001 nodes (swiss_roll_log_prob; 1e-10 nats from 40001 nodes,
  tests/test_data_toys.py). At noise 0.5 the test split's mean is -1.95 bits: no bound K can exceed it.
binary_heartbeat (discrete K = 2, shape (20,)): a 1 in every 5th bin, phase uniform on {0..4}, int64 0/1.
  Exactly 5 equally likely sequences, so -ln p(x) = ln 5 nats = log2 5 = 2.322 bits per sequence.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from suite.data import register
from suite.data.base import SPLITS, Dataset, DataSpec, derive_seed

ROLL_T = (1.5 * math.pi, 4.5 * math.pi)
ROLL_NOISE = 0.5
HEARTBEAT_LENGTH, HEARTBEAT_PERIOD = 20, 5
HEARTBEAT_NLL_NATS = math.log(HEARTBEAT_PERIOD)  # exact -ln p(x) of every heartbeat sequence
HEARTBEAT_NLL_BITS = math.log2(HEARTBEAT_PERIOD)
DEFAULT_SIZES = {"train": 10000, "val": 1000, "test": 1000}


def swiss_roll_moments(t0: float = ROLL_T[0], t1: float = ROLL_T[1]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Exact means and variances of (t cos t, t sin t), t ~ U[t0, t1] (integration by parts), float64.

    int t cos t = t sin t + cos t;  int t sin t = -t cos t + sin t;
    int t^2 cos^2 t = t^3/6 + C(t)/2,  int t^2 sin^2 t = t^3/6 - C(t)/2,
    C(t) = int t^2 cos 2t = (t^2/2) sin 2t + (t/2) cos 2t - (1/4) sin 2t.
    """
    L = t1 - t0

    def span(f):
        return (f(t1) - f(t0)) / L

    def C(t):
        return 0.5 * t * t * math.sin(2 * t) + 0.5 * t * math.cos(2 * t) - 0.25 * math.sin(2 * t)

    m_x = span(lambda t: t * math.sin(t) + math.cos(t))
    m_y = span(lambda t: -t * math.cos(t) + math.sin(t))
    v_x = span(lambda t: t**3 / 6 + 0.5 * C(t)) - m_x**2
    v_y = span(lambda t: t**3 / 6 - 0.5 * C(t)) - m_y**2
    return (m_x, m_y), (v_x, v_y)


def swiss_roll(n: int, generator: torch.Generator, noise: float = ROLL_NOISE) -> torch.Tensor:
    """n standardised swiss-roll points, float32 (n, 2): mean 0, variance 1 per coordinate in distribution."""
    t = ROLL_T[0] + (ROLL_T[1] - ROLL_T[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    (mx, my), (vx, vy) = swiss_roll_moments()
    mean = torch.tensor([mx, my], dtype=torch.float64)
    std = torch.tensor([vx + noise**2, vy + noise**2], dtype=torch.float64).sqrt()
    return ((x - mean) / std).to(torch.float32)


ROLL_GRID = 20001  # quadrature nodes of the truth (module doc)


def swiss_roll_log_prob(x: torch.Tensor, noise: float = ROLL_NOISE, n_grid: int = ROLL_GRID,
                        chunk: int = 256) -> torch.Tensor:
    """Exact ln p(x) (float64, (N,)) of standardised points x (N, 2) under `swiss_roll(noise=noise)`'s law.

    p(x) = (1/L) int_{t0}^{t1} N(x; c(t), diag(s^2)) dt, c(t) the standardised curve, s = noise / std per
    coordinate; the integrand is smooth in t (width about s / |c'(t)| >= 0.03 at noise 0.5, node spacing 5e-4),
    so the trapezoid rule on `n_grid` nodes is exact to float64 rounding in practice (module doc)."""
    if noise <= 0:
        raise ValueError(f"the swiss roll has a density only for noise > 0 (noise 0 puts it on a curve), got {noise}")
    if n_grid < 3:
        raise ValueError(f"n_grid must be >= 3, got {n_grid}")
    (mx, my), (vx, vy) = swiss_roll_moments()
    std = torch.tensor([vx + noise**2, vy + noise**2], dtype=torch.float64).sqrt()
    t = torch.linspace(*ROLL_T, n_grid, dtype=torch.float64)
    curve = (torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) - torch.tensor([mx, my], dtype=torch.float64)) / std
    s2 = (noise / std) ** 2
    log_w = torch.full((n_grid,), -math.log(n_grid - 1), dtype=torch.float64)  # trapezoid weights / L
    log_w[[0, -1]] -= math.log(2)
    x = x.to(torch.float64).reshape(-1, 2)
    out = []
    for xb in x.split(chunk):
        d2 = ((xb[:, None, :] - curve[None]) ** 2 / s2).sum(-1)
        out.append(torch.logsumexp(log_w - 0.5 * d2, 1) - 0.5 * torch.log(2 * math.pi * s2).sum())
    return torch.cat(out) if out else x.new_zeros(0)


def heartbeat(n: int, generator: torch.Generator, length: int = HEARTBEAT_LENGTH,
              period: int = HEARTBEAT_PERIOD) -> torch.Tensor:
    """n binary sequences, int64 (n, length): x_j = 1 iff j = phase (mod period), phase ~ U{0..period-1}."""
    phase = torch.randint(0, period, (n, 1), generator=generator)
    return (torch.arange(length) % period == phase).long()


def heartbeat_log_prob(x: torch.Tensor, period: int = HEARTBEAT_PERIOD) -> torch.Tensor:
    """Exact ln p(x) per sequence (float64): ln(1/period) for a valid heartbeat, -inf otherwise."""
    x = x.long()
    j = torch.arange(x.shape[-1], device=x.device)
    valid = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
    for phase in range(period):
        valid |= (x == (j % period == phase).long()).all(-1)
    out = torch.full(x.shape[:-1], -math.inf, dtype=torch.float64, device=x.device)
    return out.masked_fill(valid, -math.log(period))


class ToyDataset(Dataset):
    """A generated toy: each split drawn once from (data_seed, split) and cached."""

    def __init__(self, spec: DataSpec, make, data_seed: int = 0):
        self.spec, self._make, self.data_seed = spec, make, int(data_seed)
        self._cache: dict[str, torch.Tensor] = {}

    def examples(self, split: str) -> torch.Tensor:
        self.check_split(split)
        if split not in self._cache:
            g = torch.Generator().manual_seed(derive_seed(self.data_seed, SPLITS.index(split), 77))
            self._cache[split] = self._make(self.spec.split_sizes[split], g)
        return self._cache[split]


class SwissRollDataset(ToyDataset):
    """The swiss roll with its truth: -ln p(x) by quadrature over the curve (module doc)."""

    def __init__(self, spec: DataSpec, noise: float, data_seed: int = 0):
        super().__init__(spec, lambda n, g: swiss_roll(n, g, noise), data_seed)
        self.noise = float(noise)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ln p(x) of standardised points (float64, (N,)): the density of the point fed to the model."""
        return swiss_roll_log_prob(x, self.noise)

    def exact_nll(self, split: str) -> torch.Tensor:
        """-ln p(x) in nats (float64, (N,)) of every example of `split` (the same API as suite.data.truth)."""
        return -self.log_prob(self.examples(split))


class HeartbeatDataset(ToyDataset):
    """The heartbeat with its truth: every sequence has -ln p(x) = ln 5 nats exactly (module doc)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ln p(x) per sequence (float64)."""
        return heartbeat_log_prob(x)

    def exact_nll(self, split: str) -> torch.Tensor:
        """-ln p(x) in nats (float64, (N,)) of every example of `split`: ln 5 each (the same API as suite.data.truth)."""
        return -self.log_prob(self.examples(split))


def _sizes(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if min(sizes.values()) < 1:
        raise ValueError(f"toy split sizes must be >= 1, got {sizes}")
    return sizes


@register("swiss_roll")
def make_swiss_roll(data_dir: Path | None = None, *, noise: float = ROLL_NOISE, data_seed: int = 0,
                    n_train: int = DEFAULT_SIZES["train"], n_val: int = DEFAULT_SIZES["val"],
                    n_test: int = DEFAULT_SIZES["test"]) -> ToyDataset:
    if noise < 0:
        raise ValueError(f"swiss_roll noise must be >= 0, got {noise}")
    spec = DataSpec(
        "swiss_roll", "continuous", (2,),
        value_map=f"(t cos t, t sin t) + N(0, {noise}^2), t ~ U[1.5pi, 4.5pi], standardised to mean 0, "
                  "var 1 per coordinate",
        split_sizes=_sizes(n_train, n_val, n_test),
        protocol={"generation": f"fixed sets from data_seed={data_seed}",
                  **({"exact_nll": f"-ln of the density of the standardised float32 point: trapezoid rule over the "
                                   f"curve parameter, {ROLL_GRID} nodes"} if noise > 0 else {})},
        source="generated (Sohl-Dickstein et al. 2015)")
    return SwissRollDataset(spec, noise, data_seed) if noise > 0 else ToyDataset(spec, lambda n, g: swiss_roll(n, g, noise), data_seed)


@register("binary_heartbeat")
def make_heartbeat(data_dir: Path | None = None, *, data_seed: int = 0, n_train: int = DEFAULT_SIZES["train"],
                   n_val: int = DEFAULT_SIZES["val"], n_test: int = DEFAULT_SIZES["test"]) -> ToyDataset:
    spec = DataSpec(
        "binary_heartbeat", "discrete", (HEARTBEAT_LENGTH,), num_classes=2,
        value_map=f"int64 0/1; a 1 every {HEARTBEAT_PERIOD}th bin, uniform random phase",
        split_sizes=_sizes(n_train, n_val, n_test),
        protocol={"generation": f"fixed sets from data_seed={data_seed}",
                  "exact_nll": f"ln {HEARTBEAT_PERIOD} nats/seq"},
        source="generated (Sohl-Dickstein et al. 2015)")
    return HeartbeatDataset(spec, heartbeat, data_seed)
