"""The shared n-step sampler (MATH.md s.3-5): shapes, ranges, determinism, exactness
with the oracle posterior, and samples of briefly trained models against the data."""

import math

import pytest
import torch
from scipy import stats

from suite.bfn import ContinuousBFN, DiscreteBFN, DiscretisedBFN
from suite.bfn.testing import OraclePosterior, TinyNet, oracle_input
from suite.data.base import DataSpec
from suite.data.toys import heartbeat, heartbeat_log_prob, swiss_roll


def _models(final):
    return {
        "continuous": ContinuousBFN(DataSpec("p", "continuous", (2,)), TinyNet((2,), 1, 1), sigma1=0.05, final=final),
        "continuous_img": ContinuousBFN(
            DataSpec("i", "discretised", (1, 3, 3), 16), TinyNet((1, 3, 3), 1, 1), final=final
        ),
        "discretised": DiscretisedBFN(
            DataSpec("i", "discretised", (1, 3, 3), 16), TinyNet((1, 3, 3), 1, 2), final=final
        ),
        "binary": DiscreteBFN(DataSpec("b", "discrete", (7,), 2), TinyNet((7,), 1, 1), final=final),
        "classes": DiscreteBFN(DataSpec("c", "discrete", (5,), 27), TinyNet((5,), 27, 27), final=final),
    }


@pytest.mark.parametrize("final", ["sample", "mode"])
def test_sample_shapes_ranges_and_dtypes(final):
    """Samples are shaped (num, *spec.shape) in the data's value space: class indices in 0..K-1 (int64),
    bin centres (2k - 1)/K - 1 (float32), continuous values unclipped (MATH.md s.1 / suite/data/base.py)."""
    for name, model in _models(final).items():
        s = model.sample(6, 4, torch.Generator().manual_seed(0))
        assert s.shape == (6, *model.spec.shape), name
        if model.spec.kind == "discrete":
            assert s.dtype == torch.int64 and int(s.min()) >= 0 and int(s.max()) < model.spec.num_classes, name
        else:
            assert s.dtype == torch.float32 and torch.isfinite(s).all(), name
        if model.spec.kind == "discretised":
            K = model.spec.num_classes
            k = (s + 1) * K / 2 - 0.5
            torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)
            assert float(s.abs().max()) < 1.0, name


def test_samples_are_reproducible_under_a_generator():
    """Same seed, same samples, whatever the global RNG does in between; another seed, other samples."""
    for name, model in _models("sample").items():
        a = model.sample(5, 6, torch.Generator().manual_seed(3))
        torch.manual_seed(123)
        torch.rand(17)
        b = model.sample(5, 6, torch.Generator().manual_seed(3))
        c = model.sample(5, 6, torch.Generator().manual_seed(4))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_sampler_with_the_oracle_posterior_draws_the_data_distribution():
    """With p_O = p(x | theta) and the paper's receiver, the generative process (k ~ p_O, y ~ p_S(. | k),
    update; x ~ p_O at t = 1) samples p_data exactly for any n (MATH.md s.2: each y_i is drawn from the
    exact predictive). Chi-square per dimension on 30,000 samples, n = 1 and 5."""
    p = torch.tensor([[0.6, 0.3, 0.1], [0.05, 0.15, 0.8]], dtype=torch.float64)
    model = DiscreteBFN(DataSpec("f", "discrete", (2,), 3), OraclePosterior(p), beta1=2.0)
    model.net_input = oracle_input
    N = 30000
    for n in (1, 5):
        s = model.sample(N, n, torch.Generator().manual_seed(n))
        for d in range(2):
            counts = torch.bincount(s[:, d], minlength=3).double()
            assert stats.chisquare(counts.numpy(), (N * p[d]).numpy()).pvalue > 1e-3, (n, d, counts)
    # negative control: the final argmax ("mode", the reference) does not reproduce p_data
    model = DiscreteBFN(DataSpec("f", "discrete", (2,), 3), OraclePosterior(p), beta1=0.5, final="mode")
    model.net_input = oracle_input
    s = model.sample(N, 5, torch.Generator().manual_seed(9))
    counts = torch.bincount(s[:, 1], minlength=3).double()
    assert stats.chisquare(counts.numpy(), (N * p[1]).numpy()).pvalue < 1e-6


def test_bad_sampler_arguments_are_clear_errors():
    model = _models("sample")["binary"]
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        model.sample(4, 0)
    with pytest.raises(ValueError, match="num must be an integer >= 1"):
        model.sample(0, 3)


def _heartbeat_score(s):
    """Fraction of samples that are exact heartbeats (a 1 every 5th bin), and the fraction of ones (0.2)."""
    return float(torch.isfinite(heartbeat_log_prob(s)).double().mean()), float(s.float().mean())


def test_trained_on_heartbeat_samples_heartbeats():
    """A discrete BFN (K = 2, length 20) trained 300 steps on L^inf (paper Eq. 205) samples exact heartbeats
    (Sohl-Dickstein et al. 2015's toy: period 5, random phase) far more often than the untrained model."""
    torch.manual_seed(0)
    model = DiscreteBFN(DataSpec("heartbeat", "discrete", (20,), 2), TinyNet((20,), 1, 1, width=128), beta1=3.0)
    before, ones_before = _heartbeat_score(model.sample(500, 50, torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.loss(heartbeat(64, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, ones_after = _heartbeat_score(model.sample(500, 50, torch.Generator().manual_seed(1)))
    assert before < 0.01 and after > 0.8, (before, after)
    assert abs(ones_after - 0.2) < 0.02 < abs(ones_before - 0.2)
    with torch.no_grad():  # a bound: E[L^inf + L^r] >= H = ln 5 nats (MATH.md s.7 heartbeat)
        v = torch.cat([model.nll(heartbeat(4000, g)) for _ in range(4)]).double()
    assert float(v.mean()) > math.log(5) - 5 * float(v.std()) / math.sqrt(len(v))


def test_trained_on_swiss_roll_samples_the_roll():
    """A continuous BFN trained 600 steps on L^inf (MATH.md s.3) samples points near the (standardised) swiss roll:
    mean distance to the nearest data point far below the untrained model's, radius statistics close."""
    torch.manual_seed(0)
    model = ContinuousBFN(DataSpec("roll", "continuous", (2,)), TinyNet((2,), 1, 1, width=128), sigma1=0.05)
    ref = swiss_roll(10000, torch.Generator().manual_seed(5))

    def score(s):
        return float(torch.cdist(s, ref).min(1).values.mean()), float(s.norm(dim=1).mean())

    before, _ = score(model.sample(500, 50, torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        loss = model.loss(swiss_roll(128, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, radius = score(model.sample(500, 50, torch.Generator().manual_seed(1)))
    data_radius = float(ref.norm(dim=1).mean())
    assert after < 0.3 and after < before / 5, (before, after)
    assert abs(radius - data_radius) < 0.15 * data_radius, (radius, data_radius)
