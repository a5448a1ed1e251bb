"""The DDPM method on suite's contract: training improves the bound, sampling, the reverse step against diffusers,
losses in float32, bad input."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from baselines.ddpm import DDPM
from suite.data.base import DataSpec, bin_centres_from_index
from suite.methods import build_method


class TinyNet(nn.Module):
    """net(h, t): an MLP over the flattened example and (sin, cos) time features."""

    def __init__(self, shape, out_features, hidden=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape, self.out = tuple(shape), out_features
        D = math.prod(shape)
        self.mlp = nn.Sequential(nn.Linear(D + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, D * out_features))

    def forward(self, h, t):
        B = h.shape[0]
        z = torch.cat([h.reshape(B, -1), torch.sin(3 * t)[:, None], torch.cos(3 * t)[:, None]], 1)
        return self.mlp(z).reshape(B, *self.shape, self.out)


SHAPE, K = (1, 4, 4), 16
SPEC = DataSpec("toy4x4", "discretised", SHAPE, num_classes=K)


def patterns() -> torch.Tensor:
    """4 images: horizontal / vertical stripes and their negatives, on the 16-bin centres."""
    h = torch.tensor([[0, 15, 0, 15]]).repeat(4, 1)
    imgs = torch.stack([h, 15 - h, h.T, 15 - h.T])[:, None]
    return bin_centres_from_index(imgs, K)


def make(variance="fixed_small", loss_type="simple", T=20, **kw):
    out = 2 if variance == "learned_range" else 1
    return DDPM(SPEC, TinyNet(SHAPE, out, hidden=64), T=T, schedule="cosine", variance=variance,
                loss_type=loss_type, **kw)


def bound_mean_se(model, x, reps, seed):
    """Mean and s.e. of the term-by-term bound over x repeated `reps` times."""
    with torch.no_grad():
        v = model.full_bound(x.repeat(reps, 1, 1, 1), generator=torch.Generator().manual_seed(seed)).double()
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


@pytest.mark.parametrize("variance,loss_type", [("fixed_small", "simple"), ("learned_range", "hybrid")])
def test_training_improves_the_bound(variance, loss_type):
    """A few hundred Adam steps on 4 tiny images lower the full T-step bound (MATH.md s.8) well beyond Monte-Carlo
    error: trained mean + 5 s.e. < untrained mean - 5 s.e."""
    torch.manual_seed(0)
    model = make(variance, loss_type)
    x = patterns()
    before = bound_mean_se(model, x, 16, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        batch = x[torch.randint(0, 4, (32,), generator=g)]
        loss = model.loss(batch, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bound_mean_se(model, x, 16, 1)
    assert after[0] + 5 * after[1] < before[0] - 5 * before[1], (before, after)


def test_hybrid_vlb_trains_only_the_variance():
    """L_hybrid = L_simple + lambda L_vlb with the mean frozen (Nichol & Dhariwal Sec. 3.1): changing lambda changes
    no gradient of the eps outputs' weights, only those of the variance outputs."""
    grads = []
    for w in (1e-3, 0.5):
        model = make("learned_range", "hybrid", vlb_weight=w)
        model.loss(patterns(), generator=torch.Generator().manual_seed(3)).sum().backward()
        grads.append(model.net.net.mlp[-1].weight.grad.reshape(16, 2, -1).clone())
    torch.testing.assert_close(grads[0][:, 0], grads[1][:, 0], rtol=1e-5, atol=1e-7)  # eps head
    assert (grads[0][:, 1] - grads[1][:, 1]).abs().max() > 1e-4  # variance head


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("clip", [True, False])
def test_reverse_step_matches_diffusers(variance, clip):
    """Ho et al. Eq. 7 / Nichol & Dhariwal Eq. 15 (MATH.md s.8): our sampling step x_{t-1} = mu_theta + sigma z equals
    diffusers' DDPMScheduler.step for t >= 2 with the same noise, up to diffusers' float32 tables (1e-4); at t = 1
    diffusers returns the mean, which equals ours."""
    T = 50
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.1,
                          variance_type=variance, clip_sample=clip)
    model = DDPM(SPEC, nn.Identity(), T=T, schedule="linear", beta_start=1e-3, beta_end=0.1, variance=variance,
                 loss_type="hybrid" if variance == "learned_range" else "simple", clip_denoised=clip)
    tab = model.grid(None)
    g = torch.Generator().manual_seed(0)
    x_t = 1.5 * torch.randn(3, *SHAPE, generator=g)
    out = torch.randn(3, *SHAPE, 2 if variance == "learned_range" else 1, generator=g)
    out[..., -1].clamp_(-1, 1) if variance == "learned_range" else None
    for t in (T, 17, 2, 1):
        mean, logvar, _ = model.reverse(out, x_t, torch.full((3,), t), tab, clip)
        mo = out.movedim(-1, 1).reshape(3, -1, *SHAPE[1:])  # diffusers stacks (eps, v) on the channel axis
        noise_g = torch.Generator().manual_seed(t)
        theirs = sched.step(mo, t - 1, x_t, generator=noise_g).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        ours = mean + (torch.exp(0.5 * logvar) * z if t > 1 else 0)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sampling_shapes_ranges_and_determinism():
    """sample(num, n) returns (num, *shape) values on the K bin centres in [-1, 1]; the same generator seed gives the
    same samples, a different one different samples; n < T and final_mean run."""
    model = make("learned_range", "hybrid")
    centres = bin_centres_from_index(torch.arange(K), K)
    a = model.sample(5, 20, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, 20, generator=torch.Generator().manual_seed(1))
    c = model.sample(5, 20, generator=torch.Generator().manual_seed(2))
    assert a.shape == (5, *SHAPE) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isin(a, centres).all() and a.abs().max() <= 1
    for n in (1, 3):
        s = model.sample(2, n, generator=torch.Generator().manual_seed(0), final_mean=True)
        assert s.shape == (2, *SHAPE) and torch.isin(s, centres).all()


def test_losses_float32_under_autocast_and_finite_at_edges():
    """Losses in float32 even under bf16 autocast (DESIGN.md units); no NaN/inf for images at the extreme bins, for
    huge network outputs, and in the gradients of every loss type."""
    x = bin_centres_from_index(torch.tensor([0, K - 1]).repeat_interleave(8).reshape(1, *SHAPE).repeat(4, 1, 1, 1), K)
    for variance, loss_type in [("fixed_small", "simple"), ("fixed_large", "vlb"), ("learned_range", "hybrid")]:
        model = make(variance, loss_type, T=10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, nll = model.loss(x), model.nll(x)
        assert loss.dtype == torch.float32 and nll.dtype == torch.float32
        with torch.no_grad():
            model.net.net.mlp[-1].bias.fill_(1e4)  # eps_hat and v far outside any sane range
        for fn in (model.loss, model.nll, model.full_bound):
            v = fn(x)
            assert torch.isfinite(v).all(), (variance, fn)
        model.loss(x).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_registered_factory_and_n_steps_semantics():
    """build_method('ddpm') with a local net; nll(None) is the trained grid; n < T respaces; n > T is an error."""
    net = TinyNet(SHAPE, 1)
    model = build_method("ddpm", SPEC, net=net, T=12, variance="fixed_large", loss_type="simple")
    assert isinstance(model, DDPM) and model.continuous_time is False
    x = patterns()
    assert model.grid(None).n == 12 and model.grid(4).n == 4
    for n in (None, 1, 4, 12):
        assert model.nll(x, n).shape == (4,)
    with pytest.raises(ValueError, match="exceeds the T = 12 steps"):
        model.nll(x, 13)


def test_bad_input_gets_clear_errors():
    """Bad hyperparameters, data and network outputs raise errors that name the problem and the fix."""
    with pytest.raises(ValueError, match="discretised data"):
        DDPM(DataSpec("t", "discrete", (4,), num_classes=2), nn.Identity())
    with pytest.raises(ValueError, match="learned_range variance is trained only by L_vlb"):
        make("learned_range", "simple")
    with pytest.raises(ValueError, match="trains nothing unless"):
        make("fixed_small", "hybrid")
    with pytest.raises(ValueError, match="vlb_weight must be > 0"):
        make("learned_range", "hybrid", vlb_weight=0.0)
    with pytest.raises(ValueError, match="variance must be one of"):
        make("learned")
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        make(t_sampling="sobol")
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make(T=0)
    model = make()
    with pytest.raises(ValueError, match="bin centres"):
        model.nll(torch.full((2, *SHAPE), 0.5))  # 0.5 is not a 16-bin centre
    with pytest.raises(ValueError, match="does not match data set"):
        model.nll(torch.zeros(2, 16) + 1 / 16)
    with pytest.raises(ValueError, match="trains on its own grid"):
        model.loss(patterns(), n_steps=5)
    wrong = DDPM(SPEC, TinyNet(SHAPE, 2), T=5, variance="fixed_small", loss_type="simple")
    with pytest.raises(ValueError, match="out_features=1"):
        wrong.nll(patterns())


def test_factory_builds_a_shared_backbone():
    """The registered factory builds suite.nets' conv backbone with 1 input feature (x_t) and 2 outputs (eps, v) for
    learned_range (1 for a fixed variance); loss, nll and sample run on it."""
    pytest.importorskip("suite.nets")
    for variance, loss_type, out in [("learned_range", "hybrid", 2), ("fixed_small", "simple", 1)]:
        m = build_method("ddpm", SPEC, backbone="conv", backbone_kwargs={"channels": 8, "n_blocks": 1}, T=10,
                         variance=variance, loss_type=loss_type)
        assert m.out_features == out
        x = patterns()
        assert m.loss(x).shape == (4,) and m.nll(x, 3).shape == (4,)
        assert m.sample(2, 3, generator=torch.Generator().manual_seed(0)).shape == (2, *SHAPE)
