"""The VDM method on suite's contract: training improves the bound, sampling, losses in float32, bad input."""

import math

import pytest
import torch
from torch import nn

from baselines.vdm import VDM
from suite.data.base import DataSpec, bin_centres_from_index
from suite.methods import build_method


class TinyNet(nn.Module):
    """net(h, t): an MLP over the flattened example and (sin, cos) time features."""

    def __init__(self, shape, hidden=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = tuple(shape)
        D = math.prod(shape)
        self.mlp = nn.Sequential(nn.Linear(D + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, D))

    def forward(self, h, t):
        B = h.shape[0]
        z = torch.cat([h.reshape(B, -1), torch.sin(3 * t)[:, None], torch.cos(3 * t)[:, None]], 1)
        return self.mlp(z).reshape(B, *self.shape, 1)


SHAPE, K = (1, 4, 4), 16
SPEC = DataSpec("toy4x4", "discretised", SHAPE, num_classes=K)


def patterns() -> torch.Tensor:
    """4 images: horizontal / vertical stripes and their negatives, on the 16-bin centres."""
    h = torch.tensor([[0, 15, 0, 15]]).repeat(4, 1)
    return bin_centres_from_index(torch.stack([h, 15 - h, h.T, 15 - h.T])[:, None], K)


def bound_mean_se(model, x, reps, seed, n_steps=None):
    with torch.no_grad():
        v = model.nll(x.repeat(reps, 1, 1, 1), n_steps, generator=torch.Generator().manual_seed(seed)).double()
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


@pytest.mark.parametrize("learned_gamma", [False, True])
def test_training_improves_the_bound(learned_gamma):
    """A few hundred Adam steps on the continuous-time bound (MATH.md s.9) lower it on 4 tiny images well beyond
    Monte-Carlo error (trained mean + 5 s.e. < untrained mean - 5 s.e.), in continuous time and with n = 50 steps."""
    torch.manual_seed(0)
    model = VDM(SPEC, TinyNet(SHAPE), learned_gamma=learned_gamma, t_sampling="stratified")
    x = patterns()
    before = {n: bound_mean_se(model, x, 256, 1, n) for n in (None, 50)}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        loss = model.loss(x[torch.randint(0, 4, (32,), generator=g)], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n in (None, 50):
        after = bound_mean_se(model, x, 256, 1, n)
        assert after[0] + 5 * after[1] < before[n][0] - 5 * before[n][1], (n, before[n], after)


def test_sampling_shapes_ranges_and_determinism():
    """sample(num, n) returns (num, *shape) bin centres in [-1, 1]; the same generator seed gives the same samples,
    another seed different ones; continuous time has no sampler (n is required)."""
    model = VDM(SPEC, TinyNet(SHAPE))
    centres = bin_centres_from_index(torch.arange(K), K)
    a = model.sample(6, 10, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, 10, generator=torch.Generator().manual_seed(1))
    c = model.sample(6, 10, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, *SHAPE) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isin(a, centres).all() and a.abs().max() <= 1
    assert model.sample(2, 1, generator=torch.Generator().manual_seed(0)).shape == (2, *SHAPE)
    with pytest.raises(ValueError, match="needs an integer number of steps"):
        model.sample(2, None)


def test_oracle_sampler_reproduces_a_single_image():
    """With the exact denoiser for data = one image x* (MATH.md s.9), ancestral sampling (VDM A.4) with 20 steps
    returns x* itself: each step is q(z_s | z_t, x*), ending at z_0 ~ N(alpha_0 x*, sigma_0^2), decoded to x*'s bins."""
    x_star = patterns()[:1]

    class Oracle(nn.Module):
        def __init__(self, gamma):
            super().__init__()
            self.gamma = gamma

        def forward(self, h, t):
            s2 = torch.sigmoid(self.gamma(t)).reshape(-1, 1, 1, 1)
            z = h[..., 0].double()
            return ((z - (1 - s2).sqrt() * x_star.double()) / s2.sqrt()).float()[..., None]

    model = VDM(SPEC, nn.Identity(), learned_gamma=False)
    model.net.net = Oracle(model.gamma)
    s = model.sample(8, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, x_star.expand_as(s))


def test_losses_float32_under_autocast_and_finite_at_edges():
    """Losses in float32 even under bf16 autocast (DESIGN.md units); no NaN/inf for images at the extreme bins, huge
    network outputs, extreme gamma ends, in values and gradients, in continuous time and with n steps."""
    x = bin_centres_from_index(torch.tensor([0, K - 1]).repeat_interleave(8).reshape(1, *SHAPE).repeat(4, 1, 1, 1), K)
    for g0, g1 in [(-13.3, 5.0), (-30.0, 30.0), (-1.0, 1.0)]:
        model = VDM(SPEC, TinyNet(SHAPE), gamma_min=g0, gamma_max=g1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.loss(x).dtype == torch.float32 and model.nll(x, 10).dtype == torch.float32
        with torch.no_grad():
            model.net.net.mlp[-1].bias.fill_(1e4)
        for n in (None, 1, 10):
            v = model.loss(x, n)
            assert torch.isfinite(v).all(), (g0, g1, n)
            v.sum().backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters()), (g0, g1, n)
            model.zero_grad()


def test_registered_factory_and_n_steps_semantics():
    """build_method('vdm') with a local net; continuous time (None) and any n >= 1 evaluate; the contract shapes."""
    model = build_method("vdm", SPEC, net=TinyNet(SHAPE), learned_gamma=False)
    assert isinstance(model, VDM) and model.continuous_time is True
    x = patterns()
    for n in (None, 1, 7, 1000):
        assert model.nll(x, n).shape == (4,) and model.loss(x, n).shape == (4,)
    terms = model.bound_terms(x)
    assert set(terms) == {"prior", "recon", "diffusion"}
    assert model.full_bound(x, 5).shape == (4,)


def test_bad_input_gets_clear_errors():
    """Bad hyperparameters and data raise errors that name the problem and the fix."""
    with pytest.raises(ValueError, match="discretised data"):
        VDM(DataSpec("t", "continuous", (2,)), nn.Identity())
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        VDM(SPEC, TinyNet(SHAPE), gamma_min=1.0, gamma_max=-1.0)
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        VDM(SPEC, TinyNet(SHAPE), t_sampling="antithetic-ish")
    model = VDM(SPEC, TinyNet(SHAPE))
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        model.nll(patterns(), 0)
    with pytest.raises(ValueError, match="bin centres"):
        model.nll(patterns() * 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        model.nll(torch.zeros(2, *SHAPE, dtype=torch.long))
    with pytest.raises(ValueError, match="term-by-term bound needs a number of steps"):
        model.full_bound(patterns(), None)


def test_factory_builds_a_shared_backbone():
    """The registered factory builds suite.nets' conv backbone (1 input feature z_t, 1 output eps_hat); loss, nll
    and sample run on it."""
    pytest.importorskip("suite.nets")
    m = build_method("vdm", SPEC, backbone="conv", backbone_kwargs={"channels": 8, "n_blocks": 1})
    x = patterns()
    assert m.loss(x).shape == (4,) and m.nll(x, 3).shape == (4,)
    assert m.sample(2, 3, generator=torch.Generator().manual_seed(0)).shape == (2, *SHAPE)
