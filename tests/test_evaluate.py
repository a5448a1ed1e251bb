"""The evaluator: pass means and standard errors, the systematic-t estimator, null-model rows, units."""

import math

import numpy as np
import pytest
import torch

from suite import timesteps
from suite.data.base import Dataset, DataSpec
from suite.evaluate import evaluate, nll_passes, null_model_rows
from suite.methods import Method


class _Seq(Dataset):
    def __init__(self, n=60, kind="continuous", K=None):
        self.spec = DataSpec("_seq", kind, (4,), num_classes=K, split_sizes={"train": n, "val": n, "test": n})
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, K, (n, 4), generator=g) if K else torch.randn(n, 4, generator=g)
        self._x = x

    def examples(self, split):
        return self._x


class _TimeMethod(Method):
    """nll(x) = |x|_1 + 30 t^2 with t from suite.timesteps: E_t = |x|_1 + 10 exactly (integral of 30 t^2)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.p = torch.nn.Parameter(torch.zeros(1))

    def nll(self, x, n_steps=None):
        t = timesteps.draw_t(x.shape[0], dtype=torch.float64) if n_steps is None else (
            timesteps.draw_step(x.shape[0], n_steps).double() - 0.5) / n_steps
        return x.abs().sum(1).double() + 30 * t**2


def test_plain_and_systematic_are_unbiased_and_systematic_has_lower_variance():
    """Both estimators hit E = mean |x|_1 + 10 within 4 s.e.; for the same 40 passes (network evaluations)
    the systematic estimator's standard error is well below the plain one's: a randomly shifted R'-point
    rule on a smooth f has variance O(1/R'^2) against Var f / R' for plain draws, so with R' = 10 the s.e.
    ratio is about sqrt(10) (3.2) up to the noise of a 4-group s.e.; we require a factor 2."""
    data = _Seq()
    m = _TimeMethod(data.spec)
    exact = float(data._x.abs().sum(1).double().mean()) + 10.0
    plain = evaluate(m, data, n_repeats=40, batch_size=16, unit="nats")[0]
    syst = evaluate(m, data, n_repeats=40, batch_size=16, unit="nats", estimator="systematic", groups=4)[0]
    for row in (plain, syst):
        assert abs(row["value"] - exact) < 4 * row["stderr"] + 1e-9, row
    assert syst["stderr"] < plain["stderr"] / 2
    assert "systematic" in syst["protocol"]


def test_systematic_steps_cover_every_step_equally():
    """draw_step under systematic(u, r, R) with R = n: each example visits each step i = 1..n once."""
    u = torch.rand(7, dtype=torch.float64)
    n = 5
    seen = torch.stack([_draw(u, r, n) for r in range(n)])  # (n, B)
    for b in range(7):
        assert sorted(seen[:, b].tolist()) == list(range(1, n + 1))


def _draw(u, r, R):
    with timesteps.systematic(u, r, R):
        return timesteps.draw_step(u.shape[0], R)


def test_plain_passes_are_independent_repeats():
    data = _Seq()
    means, per_ex, count = nll_passes(_TimeMethod(data.spec), data, n_repeats=5, batch_size=16)
    assert count == 60 and per_ex.shape == (60,) and len(set(np.round(means, 12))) == 5


def test_bad_estimator_settings():
    data = _Seq()
    with pytest.raises(ValueError, match="multiple of groups"):
        nll_passes(_TimeMethod(data.spec), data, n_repeats=5, estimator="systematic", groups=2)
    with pytest.raises(ValueError, match="estimator"):
        nll_passes(_TimeMethod(data.spec), data, estimator="sobol")


def test_null_model_rows_exact():
    """Null model: continuous -> -ln N(x; 0, I) averaged; discrete -> per-dim categorical with add-one smoothing."""
    data = _Seq()
    row = null_model_rows(data, unit="nats")[0]
    x = data._x.double()
    assert row["value"] == pytest.approx(float((0.5 * x**2).sum(1).mean() + 2 * math.log(2 * math.pi)), rel=1e-10)
    disc = _Seq(kind="discrete", K=3)
    row = null_model_rows(disc, unit="nats")[0]
    x = disc._x
    p = torch.stack([(torch.bincount(x[:, d], minlength=3).double() + 1) / (60 + 3) for d in range(4)])  # (4, 3)
    want = -torch.log(p[torch.arange(4), x]).sum(1).mean()
    assert row["value"] == pytest.approx(float(want), rel=1e-10) and row["bound"] == "="
