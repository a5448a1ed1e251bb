"""The generated toys of Sohl-Dickstein et al. 2015: swiss roll (continuous 2-D) and binary heartbeat (K = 2)."""

import itertools
import math

import pytest
import torch
from scipy import integrate

from suite.data import get_dataset
from suite.data.toys import (
    HEARTBEAT_NLL_BITS,
    HEARTBEAT_NLL_NATS,
    ROLL_T,
    heartbeat,
    heartbeat_log_prob,
    swiss_roll,
    swiss_roll_log_prob,
    swiss_roll_moments,
)


def test_swiss_roll_moments_match_numerical_integration():
    """Closed-form E[t cos t], E[t sin t], Var(...) for t ~ U[1.5pi, 4.5pi] (toys.py, integration by parts)
    against adaptive quadrature of the same integrals (scipy.integrate.quad)."""
    a, b = ROLL_T
    L = b - a
    (mx, my), (vx, vy) = swiss_roll_moments()
    q = lambda f: integrate.quad(f, a, b, limit=200, epsabs=1e-12)[0] / L  # noqa: E731
    qmx, qmy = q(lambda t: t * math.cos(t)), q(lambda t: t * math.sin(t))
    assert mx == pytest.approx(qmx, abs=1e-10) and my == pytest.approx(qmy, abs=1e-10)
    assert vx == pytest.approx(q(lambda t: (t * math.cos(t)) ** 2) - qmx**2, rel=1e-10)
    assert vy == pytest.approx(q(lambda t: (t * math.sin(t)) ** 2) - qmy**2, rel=1e-10)
    assert mx == pytest.approx(2.0)  # [t sin t + cos t] over [1.5pi, 4.5pi] = 6pi, / 3pi


def test_swiss_roll_is_standardised_in_distribution():
    """Each coordinate has mean 0 and variance 1 (the documented scaling): sample moments of 2M points within
    5 standard errors (s.e. of the mean sqrt(s^2/n); of the variance sqrt((m4 - s^4)/n), about 0.0008 here, so
    forgetting the noise term of the standardisation, a 0.6% error in the variance, fails)."""
    n = 2_000_000
    x = swiss_roll(n, torch.Generator().manual_seed(3)).double()
    m = x.mean(0)
    c = x - m
    s2 = c.pow(2).mean(0)
    m4 = c.pow(4).mean(0)
    assert torch.all(m.abs() < 5 * (s2 / n).sqrt()), m
    assert torch.all((s2 - 1).abs() < 5 * ((m4 - s2**2) / n).sqrt()), s2


def test_swiss_roll_noise_zero_lies_on_the_spiral():
    """With noise 0 every point is (t cos t, t sin t) standardised: undoing the scaling gives radius = angle t
    (mod 2 pi), i.e. the Archimedean spiral r = t."""
    (mx, my), (vx, vy) = swiss_roll_moments()
    x = swiss_roll(500, torch.Generator().manual_seed(0), noise=0.0).double()
    raw = x * torch.tensor([vx, vy], dtype=torch.float64).sqrt() + torch.tensor([mx, my], dtype=torch.float64)
    r = raw.norm(dim=1)
    assert torch.all((r >= ROLL_T[0] - 1e-4) & (r <= ROLL_T[1] + 1e-4))
    phase = torch.remainder(torch.atan2(raw[:, 1], raw[:, 0]) - r, 2 * math.pi)
    assert torch.all(torch.minimum(phase, 2 * math.pi - phase) < 1e-4)


def test_heartbeat_structure_and_uniform_phase():
    """Sohl-Dickstein 2015 heartbeat: length 20, a 1 exactly at every 5th bin; phase uniform on {0..4}:
    each phase count within 5 s.e. (binomial, sqrt(n p (1 - p)), p = 1/5) of n/5."""
    n = 20_000
    x = heartbeat(n, torch.Generator().manual_seed(1))
    assert x.dtype == torch.int64 and x.shape == (n, 20)
    assert set(x.unique().tolist()) <= {0, 1}
    assert torch.all(x.sum(1) == 4)
    phase = x[:, :5].argmax(1)
    assert torch.all(x == (torch.arange(20) % 5 == phase[:, None]).long())
    counts = torch.bincount(phase, minlength=5).double()
    assert torch.all((counts - n / 5).abs() < 5 * math.sqrt(n * 0.2 * 0.8)), counts


def test_heartbeat_log_prob_is_exact_and_normalised():
    """ln p(x) = ln(1/period) for the period valid sequences, -inf otherwise; summing p over all 2^10 binary
    sequences of length 10 (period 5) gives exactly 1; the data entropy is ln 5 nats = log2 5 = 2.3219 bits."""
    allx = torch.tensor(list(itertools.product([0, 1], repeat=10)))
    lp = heartbeat_log_prob(allx)
    assert lp.dtype == torch.float64
    assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (lp > -math.inf).sum() == 5
    x = heartbeat(100, torch.Generator().manual_seed(2))
    assert torch.all(heartbeat_log_prob(x) == -math.log(5))
    x[0, 3] = 1 - x[0, 3]
    assert heartbeat_log_prob(x)[0] == -math.inf
    assert HEARTBEAT_NLL_NATS == pytest.approx(math.log(5)) and HEARTBEAT_NLL_BITS == pytest.approx(2.321928, abs=1e-6)


@pytest.mark.parametrize("name", ["swiss_roll", "binary_heartbeat"])
def test_toy_sets_are_fixed_and_splits_distinct(name):
    """Each split is a fixed set from (data_seed, split): the same across constructions, different between
    splits and between data seeds; dtypes follow the spec kind (continuous float32, discrete int64)."""
    a, b = get_dataset(name), get_dataset(name)
    for s in ("train", "val", "test"):
        assert torch.equal(a.examples(s), b.examples(s))
        assert len(a.examples(s)) == a.spec.split_sizes[s]
    if name == "swiss_roll":
        assert a.examples("train").dtype == torch.float32
        assert not torch.equal(a.examples("val"), a.examples("test"))
        assert not torch.equal(a.examples("val"), get_dataset(name, data_seed=1).examples("val"))
    else:
        assert a.examples("train").dtype == torch.int64 and a.spec.K == 2


def test_toy_options_and_bad_values():
    """Split sizes are options; impossible values get a clear error."""
    d = get_dataset("swiss_roll", n_train=64, n_val=8, n_test=8)
    assert d.spec.split_sizes == {"train": 64, "val": 8, "test": 8}
    with pytest.raises(ValueError, match="noise"):
        get_dataset("swiss_roll", noise=-1)
    with pytest.raises(ValueError, match="sizes"):
        get_dataset("binary_heartbeat", n_val=0)


def test_swiss_roll_truth_matches_adaptive_quadrature_of_its_definition():
    """ln p(x) = ln (1/L) int N(x; c(t), diag(s^2)) dt (toys.py module doc) at points on, near and off the roll,
    against scipy's adaptive quadrature of the raw-unit integral with the standardisation's Jacobian written out
    independently; and the trapezoid rule has converged (20001 against 40001 nodes)."""
    noise = 0.5
    (mx, my), (vx, vy) = swiss_roll_moments()
    sx, sy = math.sqrt(vx + noise**2), math.sqrt(vy + noise**2)
    x = torch.cat([swiss_roll(5, torch.Generator().manual_seed(1), noise).double(),
                   torch.tensor([[0.0, 0.0], [2.5, -2.5], [-1.0, 0.3]], dtype=torch.float64)])
    got = swiss_roll_log_prob(x, noise)
    a, b = ROLL_T
    for (u, v), lp in zip(x.tolist(), got.tolist(), strict=True):
        rx, ry = mx + sx * u, my + sy * v  # the raw point; p_std(x) = p_raw(r) sx sy

        def f(t, rx=rx, ry=ry):
            return math.exp(-((rx - t * math.cos(t)) ** 2 + (ry - t * math.sin(t)) ** 2) / (2 * noise**2))

        val = integrate.quad(f, a, b, limit=2000, epsabs=0, epsrel=1e-12, points=[a + k * (b - a) / 64 for k in range(1, 64)])[0]
        want = math.log(val / (b - a) / (2 * math.pi * noise**2) * sx * sy)
        assert lp == pytest.approx(want, abs=1e-7), (u, v)
    assert torch.allclose(got, swiss_roll_log_prob(x, noise, n_grid=40001), atol=1e-9, rtol=0)


def test_swiss_roll_truth_integrates_to_one():
    """The density of the standardised point integrates to 1 over the plane (2-D midpoint rule on [-4, 4]^2,
    which holds all but a negligible tail at noise 0.5); a wrong Jacobian or a missing 1/L fails by far more."""
    h = 8 / 240
    g = torch.arange(-4 + h / 2, 4, h, dtype=torch.float64)
    pts = torch.cartesian_prod(g, g)
    total = swiss_roll_log_prob(pts, 0.5, n_grid=4001).exp().sum().item() * h * h
    assert total == pytest.approx(1.0, abs=2e-3)


def test_swiss_roll_truth_is_registered_and_noise_zero_has_none():
    d = get_dataset("swiss_roll", n_train=10, n_val=10, n_test=50)
    nll = d.exact_nll("test")
    assert nll.dtype == torch.float64 and nll.shape == (50,) and torch.isfinite(nll).all()
    assert "exact_nll" in d.spec.protocol
    assert "exact_nll" not in get_dataset("swiss_roll", noise=0.0, n_train=10, n_val=10, n_test=10).spec.protocol
    with pytest.raises(ValueError, match="noise > 0"):
        swiss_roll_log_prob(torch.zeros(1, 2), 0.0)
