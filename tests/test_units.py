"""suite/units.py: the checks MATH.md s.1 lists, and round trips."""

import math

import numpy as np
import pytest

from suite import units


def test_math_sheet_checks():
    """MATH.md s.1: 77.87 nats/image = 0.09932 nats/dim = 0.1433 bits/dim (D = 784);
    2.66 bits/dim = 1.8438 nats/dim; 1.41 BPC = 0.9773 nats/char."""
    nats = 77.87
    assert units.nats_to(nats, "nats/dim", 784) == pytest.approx(0.09932, abs=5e-6)
    assert units.nats_to(nats, "bits/dim", 784) == pytest.approx(0.1433, abs=5e-5)
    assert units.convert(2.66, "bits/dim", "nats/dim", 3072) == pytest.approx(1.8438, abs=5e-5)
    assert units.convert(1.41, "BPC", "nats/dim", 256) == pytest.approx(0.9773, abs=5e-5)


@pytest.mark.parametrize("unit", units.UNITS)
@pytest.mark.parametrize("D", [1, 20, 784, 3072])
def test_round_trip(unit, D):
    x = np.array([0.0, 1.5, 1234.5])
    np.testing.assert_allclose(units.to_nats(units.nats_to(x, unit, D), unit, D), x, rtol=1e-12)


def test_bits_per_dim_definition():
    """bits/dim = nats / (D ln 2), computed independently."""
    assert units.nats_to(1000.0, "bits/dim", 3072) == pytest.approx(1000.0 / (3072 * math.log(2)))
    assert units.nats_to(math.log(2) * 7, "bits/seq", 20) == pytest.approx(7.0)


def test_bad_unit_and_dim():
    with pytest.raises(ValueError, match="unknown unit"):
        units.nats_to(1.0, "furlongs", 3)
    with pytest.raises(ValueError, match="D must be >= 1"):
        units.nats_to(1.0, "bits/dim", 0)


def test_default_units():
    assert units.default_unit("discrete", "binarized_mnist") == "nats/image"
    assert units.default_unit("discrete", "mnist_mixture_binarized") == "nats/image"  # the ground-truth twin
    assert units.default_unit("discrete", "text_hmm") == "BPC"
    assert units.default_unit("discretised", "cifar10_256") == "bits/dim"
    assert units.default_unit("discrete", "text8") == "BPC"
    assert units.default_unit("discrete", "text_embedded") == "BPC"
    assert units.default_unit("discrete", "binary_heartbeat") == "bits/seq"


def test_mean_and_stderr():
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, size=400)
    m, se = units.mean_and_stderr(v)
    assert m == pytest.approx(v.mean())
    assert se == pytest.approx(v.std(ddof=1) / 20.0)
    assert math.isnan(units.mean_and_stderr([1.0])[1])
    with pytest.raises(ValueError):
        units.mean_and_stderr([])
