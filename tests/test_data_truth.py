"""Ground-truth data sets (suite/data/truth): exact -ln p(x) against brute-force enumeration on small instances,
samplers against the exact probabilities, EM's monotone objective, the shipped models' data sets (specs, seeds,
value ranges, truth beating the null model) and their assets."""

import hashlib
import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from suite.data import dataset_names, get_dataset
from suite.data.base import bin_centres_from_index
from suite.data.truth import HMM_ASSET, MIXTURE_ASSETS, has_exact_nll, load_hmm, load_mixture
from suite.data.truth.gmm import GaussianMixture, swiss_roll_gmm
from suite.data.truth.hmm import HMM, baum_welch_step, random_hmm
from suite.data.truth.mixture import PixelMixture, fit_mixture
from suite.evaluate import null_model_rows

ROOT = Path(__file__).resolve().parents[1]
TRUTH_SETS = ("text_hmm", "mnist_mixture_binarized", "mnist_mixture_256", "mnist_mixture_16", "gmm_2d")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _small_hmm(S=3, K=4, seed=0) -> HMM:
    """A random HMM with a far-from-uniform start (state i has weight 2^-i), sticky states and peaked emissions
    (state i prefers symbol i mod K), so a sampler that loses the start or the chain's memory shows."""
    h = random_hmm(S, K, _gen(seed))
    peak = torch.nn.functional.one_hot(torch.arange(S) % K, K).double()
    return HMM(0.5 ** torch.arange(S, dtype=torch.float64), h.trans + 3 * torch.eye(S), h.emit + 2 * peak)


def _small_mixture(K, C=2, D=3, seed=0) -> PixelMixture:
    g = _gen(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64) + 0.05  # noqa: E731
    return PixelMixture(r(C), r(C, D, 2 if K == 2 else 3), r(C, K - 2) if K > 2 else None, K)


def _cells_match(counts: torch.Tensor, p: torch.Tensor, n: int):
    """Every cell count within 5 binomial s.e. (sqrt(n p (1 - p))) of n p: the sampler draws from p."""
    z = (counts.double() - n * p) / (n * p * (1 - p)).sqrt()
    assert z.abs().max() < 5, z.abs().max()


@pytest.fixture(scope="module")
def sets():
    return {name: get_dataset(name) for name in TRUTH_SETS}


# ---------------------------------------------------------------- HMM


def test_hmm_forward_equals_the_sum_over_all_state_paths():
    """Forward algorithm (Rabiner eq. 19-21, scaled) = sum over all S^L paths of pi E prod A E, for all K^L
    sequences (S = 3, K = 4, L = 4); the probabilities of all 256 sequences sum to 1."""
    h, L = _small_hmm(), 4
    seqs = torch.tensor(list(itertools.product(range(4), repeat=L)))
    brute = torch.zeros(len(seqs), dtype=torch.float64)
    for path in itertools.product(range(3), repeat=L):
        z = torch.tensor(path)
        p = h.start[z[0]] * h.emit[z[0], seqs[:, 0]]
        for t in range(1, L):
            p = p * h.trans[z[t - 1], z[t]] * h.emit[z[t], seqs[:, t]]
        brute += p
    lp = h.log_prob(seqs)
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp, brute.log(), rtol=0, atol=1e-12)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # leading dimensions are kept
    assert h.log_prob(seqs.view(16, 16, L)).shape == (16, 16)


def test_hmm_sampler_draws_the_forward_probabilities():
    """40,000 ancestral samples of length 3: the count of each of the 64 sequences within 5 s.e. of n p(x)."""
    h, n = _small_hmm(seed=1), 40_000
    x = h.sample(n, 3, _gen(2))
    assert x.dtype == torch.int64 and x.shape == (n, 3)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=3)))
    counts = torch.bincount(x[:, 0] * 16 + x[:, 1] * 4 + x[:, 2], minlength=64)
    _cells_match(counts, h.log_prob(seqs).exp(), n)


def test_baum_welch_never_lowers_its_map_objective():
    """EM with pseudo-counts a is MAP EM under Dirichlet(1 + a) priors: ln p(X | theta) + a sum ln theta never
    falls from one step to the next (Dempster et al. 1977); without the step it would not be guaranteed."""
    truth, a = _small_hmm(S=3, K=4, seed=3), 0.5
    x = truth.sample(200, 12, _gen(4))
    model = random_hmm(4, 4, _gen(5))

    def objective(m):
        prior = sum((a * p.log()).sum() for p in (m.start, m.trans, m.emit))
        return float(m.log_prob(x).sum() + prior)

    values = [objective(model)]
    for _ in range(15):
        model, ll = baum_welch_step(model, x, a)
        values.append(objective(model))
    diffs = np.diff(values)
    assert (diffs > -1e-9 * abs(values[-1])).all(), diffs
    assert values[-1] - values[0] > 50  # and it actually learns


def test_shipped_hmm_is_stationary_and_its_windows_marginalise():
    """The text HMM starts in its stationary distribution (pi A = pi), so windows of a stationary stream are
    consistent: sum_{x_1} p(x_1, x_2, x_3) = p(x_2, x_3) and sum_{x_3} p(x_1, x_2, x_3) = p(x_1, x_2)."""
    h = load_hmm()
    torch.testing.assert_close(h.start @ h.trans, h.start, rtol=0, atol=1e-12)
    pairs = torch.randint(0, 27, (20, 2), generator=_gen(6))
    c = torch.arange(27)
    first = torch.stack([torch.cat([c[:, None], p.expand(27, 2)], 1) for p in pairs])  # (20, 27, 3)
    last = torch.stack([torch.cat([p.expand(27, 2), c[:, None]], 1) for p in pairs])
    for triples in (first, last):
        torch.testing.assert_close(torch.logsumexp(h.log_prob(triples), 1), h.log_prob(pairs), rtol=0, atol=1e-10)


def test_text_hmm_spec_values_and_truth(sets):
    """text_hmm: discrete K = 27 sequences of seq_len, int64 in 0..26; exact_nll is the HMM's forward -ln p."""
    d = sets["text_hmm"]
    s = d.spec
    assert (s.kind, s.K, s.shape) == ("discrete", 27, (128,))
    assert s.split_sizes == {"train": 20000, "val": 1000, "test": 1000}
    assert "exact_nll" in s.protocol and has_exact_nll(d)
    assert s.value_map == get_dataset("text_embedded").spec.value_map
    x = d.examples("val")
    assert x.dtype == torch.int64 and x.shape == (1000, 128) and 0 <= x.min() and x.max() <= 26
    nll = d.exact_nll("val")
    assert nll.dtype == torch.float64 and nll.shape == (1000,)
    torch.testing.assert_close(nll, -load_hmm().log_prob(x), rtol=0, atol=0)
    short = get_dataset("text_hmm", seq_len=16, n_train=5, n_val=5, n_test=5)
    assert short.examples("test").shape == (5, 16) and short.spec.protocol["seq_len"] == "16"


def test_text_hmm_first_characters_follow_the_stationary_emissions(sets):
    """x_1 ~ sum_i pi_i E_ik: the first characters of the 20,000 train sequences (independent draws) within 5
    s.e. of each character's stationary probability; and the text is text-like (space is the commonest)."""
    d, h = sets["text_hmm"], load_hmm()
    p = h.start @ h.emit
    x1 = d.examples("train")[:, 0]
    _cells_match(torch.bincount(x1, minlength=27), p, len(x1))
    assert p.argmax() == 0 and 0.12 < p[0] < 0.25


def test_text_hmm_truth_beats_the_null_model(sets):
    """Truth 2.9 BPC against 4.1 for the per-position unigram null (suite.evaluate.null_model_rows): the HMM's
    memory is real structure a model must learn. Measured gap 1.2 BPC; asserted > 0.8."""
    d = sets["text_hmm"]
    null = null_model_rows(d, split="test", unit="BPC")[0]["value"]
    truth = d.exact_nll("test").mean().item() / (128 * math.log(2))
    assert 2.6 < truth < 3.2 and null - truth > 0.8, (truth, null)


# ---------------------------------------------------------------- pixel mixtures


@pytest.mark.parametrize("K, D", [(2, 4), (4, 3), (5, 3)])
def test_mixture_log_prob_equals_explicit_enumeration(K, D):
    """ln p(x) = ln sum_c w_c prod_d q[c, d, x_d] with q written out from the type / interior form, for all
    K^D images of a tiny model; the K^D probabilities sum to 1."""
    m = _small_mixture(K, C=2, D=D, seed=K)
    imgs = torch.tensor(list(itertools.product(range(K), repeat=D)))
    brute = torch.zeros(len(imgs), dtype=torch.float64)
    for c in range(2):
        p = torch.full((len(imgs),), float(m.weights[c]), dtype=torch.float64)
        for d in range(D):
            r = m.types[c, d]
            q = [r[0]] + ([r[2] * m.interior[c, k - 1] for k in range(1, K - 1)] if K > 2 else []) + [r[1]]
            p = p * torch.stack(q)[imgs[:, d]]
        brute += p
    lp = m.log_prob(imgs)
    torch.testing.assert_close(lp, brute.log(), rtol=0, atol=1e-12)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(m.bin_probs().sum(-1), torch.ones(2, D, dtype=torch.float64))


@pytest.mark.parametrize("K", [2, 4])
def test_mixture_sampler_draws_the_exact_probabilities(K):
    """40,000 samples of a tiny mixture (D = 3): each of the K^3 images' count within 5 s.e. of n p(x)."""
    m, n = _small_mixture(K, C=3, D=3, seed=10 + K), 40_000
    x = m.sample(n, _gen(K))
    assert x.dtype == torch.int64 and x.shape == (n, 3)
    imgs = torch.tensor(list(itertools.product(range(K), repeat=3)))
    counts = torch.bincount((x * torch.tensor([K * K, K, 1])).sum(1), minlength=K**3)
    _cells_match(counts, m.log_prob(imgs).exp(), n)


def test_mixture_em_never_lowers_its_map_objective_and_recovers_components():
    """EM with pseudo-counts a (MAP EM): ln p(X | theta) + a sum ln theta non-decreasing over iterations; on data
    from two well-separated components it recovers their weights (0.3 / 0.7) to within 0.03."""
    K, D, a = 4, 12, 1.0
    g = _gen(20)
    types = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]], dtype=torch.float64)[:, None].expand(2, D, 3)
    truth = PixelMixture(torch.tensor([0.3, 0.7]), types, torch.tensor([[0.5, 0.5], [0.9, 0.1]]), K)
    x = truth.sample(3000, g)
    values = []
    for iters in range(0, 8):
        m, _ = fit_mixture(x, K, 2, iters, seed=1, pseudo=a)
        prior = a * (m.weights.log().sum() + m.types.log().sum() + m.interior.log().sum())
        values.append(float(m.log_prob(x).sum() + prior))
    assert (np.diff(values) > -1e-9 * abs(values[-1])).all(), values
    assert sorted(m.weights.tolist()) == pytest.approx([0.3, 0.7], abs=0.03)
    with pytest.raises(ValueError, match="num_components"):
        fit_mixture(x[:5], K, 6, 1, seed=0)


def test_mixture_em_converges_to_its_fixed_point_with_exact_posteriors():
    """At convergence the M-step equation holds with the model's own posteriors p(c | x) = w_c p(x | c) / p(x)
    (p(x | c) from the written-out q): w_c = (sum_n p(c | x_n) + a) / (N + C a). Overlapping components, so the
    posteriors are soft and a wrong E-step would settle elsewhere; the fit also beats, on its own training images,
    the generating model (measured +0.038 nats/image) and so a collapse into one product (-0.026 below it)."""
    K, D, a = 4, 6, 1.0
    types = torch.tensor([[0.5, 0.3, 0.2], [0.3, 0.5, 0.2]], dtype=torch.float64)[:, None].expand(2, D, 3)
    truth = PixelMixture(torch.tensor([0.4, 0.6]), types, torch.tensor([[0.6, 0.4], [0.4, 0.6]]), K)
    x = truth.sample(500, _gen(21))
    m, hist = fit_mixture(x, K, 3, 1000, seed=2, pseudo=a)
    lq = m.bin_probs().log()  # (C, D, K)
    joint = lq[:, torch.arange(D)[None, :], x].sum(-1).T + m.weights.log()  # (N, C)
    post = (joint - torch.logsumexp(joint, 1, keepdim=True)).exp()
    assert post.max(1).values.mean() < 0.9  # soft: the test would be blind with near-hard posteriors
    torch.testing.assert_close(m.weights, (post.sum(0) + a) / (len(x) + 3 * a), rtol=0, atol=1e-12)
    assert m.log_prob(x).mean() > truth.log_prob(x).mean()


@pytest.mark.parametrize("name, K, twin", [("mnist_mixture_binarized", 2, "mnist_embedded_binarized"),
                                           ("mnist_mixture_256", 256, "mnist_embedded_256"),
                                           ("mnist_mixture_16", 16, "mnist_embedded_16")])
def test_mnist_mixture_specs_match_the_embedded_digits(sets, name, K, twin):
    """Kind, K, shape and split sizes equal the embedded MNIST data set each stands beside, and the values are
    that data set's: int64 0/1, or float32 bin centres (2k + 1)/K - 1; batches() yields them unchanged."""
    d, e = sets[name], get_dataset(twin)
    assert (d.spec.kind, d.spec.K, d.spec.shape, d.spec.split_sizes) == (e.spec.kind, e.spec.K, e.spec.shape,
                                                                         e.spec.split_sizes)
    assert has_exact_nll(d)
    x = d.examples("val")
    ref = next(e.batches("val", 200))
    assert x.dtype == ref.dtype and x.shape[1:] == ref.shape[1:]
    allowed = torch.arange(2) if K == 2 else bin_centres_from_index(torch.arange(K), K)
    assert torch.isin(x.unique(), allowed).all()
    assert len(x.unique()) == K  # every bin occurs (so the grid is the full one, not a subset)
    assert torch.equal(torch.cat(list(d.batches("val", 300))), x)


@pytest.mark.parametrize("name, K", [("mnist_mixture_binarized", 2), ("mnist_mixture_256", 256),
                                     ("mnist_mixture_16", 16)])
def test_mnist_mixture_truth_is_the_written_out_product(sets, name, K):
    """exact_nll = -logsumexp_c (ln w_c + sum_d ln q[c, d, x_d]) by gathering the written-out q (C, D, K), a code
    path apart from the one-hot products; float64; finite."""
    d, m = sets[name], load_mixture(K)
    x = d.examples("test")[:200]
    idx = d.from_model(x)
    lq = m.bin_probs().log()  # (C, D, K)
    per = lq[:, torch.arange(784)[None, :], idx].sum(-1)  # (C, N)
    ref = -torch.logsumexp(per + m.weights.log()[:, None], 0)
    nll = d.exact_nll("test")[:200]
    assert nll.dtype == torch.float64 and torch.isfinite(nll).all()
    torch.testing.assert_close(nll, ref, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name, K", [("mnist_mixture_binarized", 2), ("mnist_mixture_256", 256)])
def test_mnist_mixture_samples_follow_the_model(sets, name, K):
    """Ink count T = #pixels in the top bin, i.i.d. across images: sample mean and mean square of T over the 8000
    train images within 5 s.e. of E[T] = sum_c w_c sum_d r_cd and E[T^2] = sum_c w_c (sum_d r_cd (1 - r_cd) +
    (sum_d r_cd)^2), r_cd = p(top bin); the second moment sees the mixture (one product would give less)."""
    d, m = sets[name], load_mixture(K)
    T = (d.from_model(d.examples("train")) == K - 1).sum(1).double()
    r = m.types[:, :, 1]
    mean_c = r.sum(1)
    ET, ET2 = (m.weights * mean_c).sum(), (m.weights * ((r * (1 - r)).sum(1) + mean_c**2)).sum()
    n = len(T)
    assert abs(T.mean() - ET) < 5 * T.std() / math.sqrt(n)
    assert abs((T**2).mean() - ET2) < 5 * (T**2).std() / math.sqrt(n)


@pytest.mark.parametrize("name, margin", [("mnist_mixture_binarized", 50), ("mnist_mixture_256", 100),
                                          ("mnist_mixture_16", 70)])
def test_mnist_mixture_truth_beats_the_null_model(sets, name, margin):
    """Mean truth well below the per-pixel categorical null (nats/image). Measured gaps: 70 (binarised), 147
    (256 bins), 100 (16 bins); asserted with about 30 % to spare."""
    d = sets[name]
    null = null_model_rows(d, split="test", unit="nats")[0]["value"]
    assert null - d.exact_nll("test").mean().item() > margin


# ---------------------------------------------------------------- 2-D Gaussian mixture


def test_gmm_log_density_matches_scipy_and_integrates_to_one():
    """ln p(z) = ln sum_j w_j N(z; mu_j, Sigma_j) equals scipy.stats.multivariate_normal's mixture; p integrates
    to 1 on a grid over [-4, 4]^2 (trapezoid, h = 0.01; mass outside < 1e-6)."""
    gmm, _, _ = swiss_roll_gmm()
    z = torch.randn(500, 2, generator=_gen(30), dtype=torch.float64) * 1.5
    ref = np.log(sum(w * stats.multivariate_normal(m, c).pdf(z.numpy()) for w, m, c in
                     zip(gmm.weights.numpy(), gmm.means.numpy(), gmm.covs.numpy(), strict=True)))
    np.testing.assert_allclose(gmm.log_prob(z).numpy(), ref, rtol=1e-12, atol=1e-12)
    h = 0.01
    u = torch.arange(-4, 4 + h / 2, h, dtype=torch.float64)
    grid = torch.cartesian_prod(u, u)
    p = torch.cat([gmm.log_prob(grid[i : i + 40000]).exp() for i in range(0, len(grid), 40000)]).view(len(u), len(u))
    mass = torch.trapezoid(torch.trapezoid(p, dx=h, dim=1), dx=h).item()
    assert mass == pytest.approx(1.0, abs=1e-5)


def test_gmm_is_standardised_exactly_and_the_jacobian_is_inside():
    """The standardised mixture has mean 0, variance 1 per coordinate (closed-form moments); ln p_z(z) =
    ln p_x(m + s z) + ln s_1 + ln s_2 against the raw-space mixture."""
    gmm, m, s = swiss_roll_gmm()
    mean, cov = gmm.moments()
    torch.testing.assert_close(mean, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov.diagonal(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    raw = GaussianMixture(gmm.weights, gmm.means * s + m, gmm.covs * (s[:, None] * s[None, :]))
    z = gmm.sample(300, _gen(31))
    torch.testing.assert_close(gmm.log_prob(z), raw.log_prob(z * s + m) + s.log().sum(), rtol=1e-12, atol=1e-12)


def test_gmm_samples_have_the_model_entropy(sets):
    """The mean exact NLL of the train split (10,000 samples) matches the entropy -int p ln p computed on a grid,
    within 5 s.e.: the sampler draws from the density log_prob scores. Beats the N(0, I) null by > 1 nat
    (measured 1.5)."""
    d = sets["gmm_2d"]
    gmm, _, _ = swiss_roll_gmm()
    h = 0.01
    u = torch.arange(-5, 5 + h / 2, h, dtype=torch.float64)
    grid = torch.cartesian_prod(u, u)
    lp = torch.cat([gmm.log_prob(grid[i : i + 40000]) for i in range(0, len(grid), 40000)])
    entropy = -(lp.exp() * lp).sum().item() * h * h
    nll = d.exact_nll("train")
    assert abs(nll.mean().item() - entropy) < 5 * nll.std().item() / math.sqrt(len(nll)), (nll.mean(), entropy)
    null = null_model_rows(d, split="test", unit="nats")[0]["value"]
    assert null - d.exact_nll("test").mean().item() > 1.0
    x = d.examples("test")
    assert x.dtype == torch.float32 and x.shape == (1000, 2)
    torch.testing.assert_close(d.exact_nll("test"), -gmm.log_prob(x.double()), rtol=0, atol=0)


def test_gmm_is_shaped_like_the_swiss_roll():
    """Swiss-roll points (suite.data.toys) score nearly as well under gmm_2d as its own samples do: cross-entropy
    1.36 against the mixture's entropy 1.32 nats (measured), asserted within 0.15; a unit Gaussian scores 2.83."""
    gmm, _, _ = swiss_roll_gmm()
    roll = get_dataset("swiss_roll").examples("test").double()
    cross = -gmm.log_prob(roll).mean().item()
    own = -gmm.log_prob(gmm.sample(20000, _gen(32))).mean().item()
    assert abs(cross - own) < 0.15, (cross, own)


# ---------------------------------------------------------------- all ground-truth sets


@pytest.mark.parametrize("name", TRUTH_SETS)
def test_truth_sets_are_fixed_by_seed_and_splits_differ(sets, name):
    """Each split is drawn once from (data_seed, split): the same across constructions, different between
    splits and between data seeds; the same model, so both seeds' mean truth agree within 5 s.e."""
    small = dict(n_train=64, n_val=64, n_test=64)
    a, b, c = get_dataset(name, **small), get_dataset(name, **small), get_dataset(name, data_seed=1, **small)
    for s in ("train", "val", "test"):
        assert torch.equal(a.examples(s), b.examples(s))
        assert torch.equal(a.exact_nll(s), b.exact_nll(s))
        assert len(a.examples(s)) == a.spec.split_sizes[s] == 64
    assert not torch.equal(a.examples("val"), a.examples("test"))
    assert not torch.equal(a.examples("val"), c.examples("val"))
    v, w = sets[name].exact_nll("val"), get_dataset(name, data_seed=1, n_train=1).exact_nll("val")
    se = math.sqrt(v.var().item() / len(v) + w.var().item() / len(w))
    assert abs(v.mean().item() - w.mean().item()) < 5 * se


def test_which_data_sets_know_their_truth():
    """The five truth sets, the heartbeat and the swiss roll (by quadrature) expose exact_nll and say so in
    spec.protocol; no other registered data set does (real data have none)."""
    known = {n for n in dataset_names() if has_exact_nll(get_dataset(n))}
    assert known == {*TRUTH_SETS, "binary_heartbeat", "swiss_roll"}


def test_heartbeat_exact_nll_is_ln5():
    """Sohl-Dickstein's heartbeat: every sequence of every split has -ln p(x) = ln 5 = 1.6094 nats exactly."""
    d = get_dataset("binary_heartbeat", n_train=100, n_val=10, n_test=10)
    for s in ("train", "val", "test"):
        nll = d.exact_nll(s)
        assert nll.dtype == torch.float64 and torch.all(nll == math.log(5))


def test_bad_options_and_values_name_the_problem():
    with pytest.raises(ValueError, match="seq_len"):
        get_dataset("text_hmm", seq_len=0)
    with pytest.raises(ValueError, match="n_val"):
        get_dataset("mnist_mixture_16", n_val=0)
    with pytest.raises(ValueError, match="num_components"):
        get_dataset("gmm_2d", num_components=0)
    with pytest.raises(ValueError, match="noise"):
        get_dataset("gmm_2d", noise=0)
    with pytest.raises(ValueError, match="bin centres"):
        get_dataset("mnist_mixture_16", n_train=1).log_prob(torch.zeros(2, 1, 28, 28) + 0.01)
    with pytest.raises(ValueError, match="shape"):
        get_dataset("mnist_mixture_16", n_train=1).log_prob(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="0..26"):
        load_hmm().log_prob(torch.tensor([[0, 27]]))


# ---------------------------------------------------------------- assets


def _build_script():
    spec = importlib.util.spec_from_file_location("build_truth_assets", ROOT / "scripts/build_truth_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_truth_assets_are_small_recorded_and_carry_their_settings():
    """The fitted parameters ship (< 2 MB together), PROVENANCE.md names each file's sha256, and each npz
    records the script's settings it was fitted with."""
    build = _build_script()
    paths = [HMM_ASSET, *MIXTURE_ASSETS.values()]
    assert sum(p.stat().st_size for p in paths) < 2e6
    doc = (ROOT / "suite/data/assets/PROVENANCE.md").read_text()
    names = {HMM_ASSET: "text_hmm", **{p: f"mixture_{K}" for K, p in MIXTURE_ASSETS.items()}}
    for p in paths:
        assert hashlib.sha256(p.read_bytes()).hexdigest() in doc, p.name
        with np.load(p, allow_pickle=False) as z:
            settings = json.loads(str(z["settings"].reshape(-1)[0]))
        assert settings == {"name": names[p], **build.SETTINGS[names[p]]}


@pytest.mark.slow
def test_rebuilding_a_mixture_asset_is_byte_identical(tmp_path):
    """scripts/build_truth_assets.py --only mixture_16 reproduces the shipped file byte for byte (about 20 s)."""
    build = _build_script()
    build.main(["--only", "mixture_16", "--out", str(tmp_path)])
    name = MIXTURE_ASSETS[16].name
    assert (tmp_path / name).read_bytes() == MIXTURE_ASSETS[16].read_bytes()
