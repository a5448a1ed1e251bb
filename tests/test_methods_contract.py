"""The Method contract (suite/methods.py) holds for every registered method: the declared attributes the harness
reads (continuous_time, num_steps, registered_name), `bound_terms` summing to `nll` on the same random numbers,
the full (term-by-term) bound's names where a method has one, and one t_sampling vocabulary."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from suite import timesteps
from suite.data.base import DataSpec, bin_centres_from_index
from suite.methods import Method, build_method, method_names, module_device

MLP = {"backbone": "mlp", "backbone_kwargs": {"width": 16, "depth": 1, "time_dim": 8}}
CONT = DataSpec("_c", "continuous", (3,))
DISC16 = DataSpec("_d16", "discretised", (1, 2, 2), num_classes=16)
BIN = DataSpec("_b", "discrete", (4,), num_classes=2)
CAT5 = DataSpec("_k5", "discrete", (4,), num_classes=5)

# every registered method, on a small data set of a kind it models, with a small grid where it has one
CASES = {
    "bfn_continuous": (CONT, {}),
    "bfn_discretised": (DISC16, {}),
    "bfn_discrete": (CAT5, {}),
    "ddpm": (DISC16, {"T": 8}),
    "vdm": (DISC16, {}),
    "sohl_gaussian": (CONT, {"T": 8, "n_basis": 3}),
    "sohl_binomial": (BIN, {"T": 8, "n_basis": 3}),
    "multinomial_diffusion": (CAT5, {"T": 8}),
    "masked_diffusion": (CAT5, {"alpha0": 0.9, "alpha1": 0.1}),  # both end terms present
}
WITH_T_SAMPLING = ("ddpm", "vdm", "multinomial_diffusion", "masked_diffusion")


def batch(spec: DataSpec, B: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if spec.kind == "continuous":
        return torch.randn(B, *spec.shape, generator=g)
    k = torch.randint(0, spec.num_classes, (B, *spec.shape), generator=g)
    return bin_centres_from_index(k, spec.num_classes) if spec.kind == "discretised" else k


def build(name: str, **kw) -> Method:
    spec, hp = CASES[name]
    torch.manual_seed(0)
    return build_method(name, spec, **MLP, **{**hp, **kw})


def test_every_registered_method_has_a_case():
    """A new method must be added to CASES, so the contract is checked for it too."""
    public = {n for n in method_names() if not n.startswith("_")}  # tests register "_..." toys
    assert public == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_attributes(name):
    """registered_name set by the registry; continuous_time a bool; num_steps None exactly in continuous time, else
    the trained grid (an int >= 1); label = the registered name; the device of the parameters."""
    m = build(name)
    assert isinstance(m, Method)
    assert m.registered_name == name and m.label == name
    assert isinstance(m.continuous_time, bool)
    if m.continuous_time:
        assert m.num_steps is None
    else:
        assert isinstance(m.num_steps, int) and m.num_steps == CASES[name][1]["T"]
    assert m.device == torch.device("cpu") == module_device(m)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("n_steps", [None, 3])
def test_bound_terms_sum_to_nll_on_the_same_draws(name, n_steps):
    """bound_terms(x, n) is nll(x, n) by term: after the same torch seed, the terms (each Tensor[B], finite) sum to
    nll within float32 rounding."""
    m = build(name).eval()
    x = batch(m.spec)
    with torch.no_grad():
        torch.manual_seed(11)
        terms = m.bound_terms(x, n_steps)
        torch.manual_seed(11)
        nll = m.nll(x, n_steps)
    assert terms and all(isinstance(k, str) for k in terms)
    for k, v in terms.items():
        assert v.shape == (x.shape[0],) and torch.isfinite(v).all(), k
    total = sum(terms.values())
    assert torch.allclose(total.double(), nll.double(), rtol=1e-6, atol=1e-5 * max(1.0, float(nll.abs().max())))
    torch.manual_seed(12)
    with torch.no_grad():
        other = m.nll(x, n_steps)
    assert not torch.equal(other, nll)  # a Monte-Carlo draw: another seed, another value


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_bound_names(name):
    """Where a method computes its n-step bound term by term: full_bound_terms has bound_terms' keys and sums to
    full_bound on the same draws; step_terms is (B, n)."""
    m = build(name).eval()
    if not hasattr(m, "full_bound_terms"):
        pytest.skip(f"{name} has no term-by-term bound")
    x, n = batch(m.spec), 3
    with torch.no_grad():
        torch.manual_seed(5)
        full_terms = m.full_bound_terms(x, n)
        torch.manual_seed(5)
        full = m.full_bound(x, n)
        keys = set(m.bound_terms(x, n))
    assert set(full_terms) == keys
    assert all(v.shape == (x.shape[0],) for v in full_terms.values())
    assert torch.allclose(sum(full_terms.values()).double(), full.double(), rtol=1e-6, atol=1e-5)
    if hasattr(m, "step_terms"):
        with torch.no_grad():
            steps = m.step_terms(x, n)
        assert steps.shape == (x.shape[0], n) and torch.isfinite(steps).all()


@pytest.mark.parametrize("name", WITH_T_SAMPLING)
def test_one_t_sampling_vocabulary(name):
    """Every method with a t_sampling option takes timesteps.T_SAMPLING ("iid", "stratified"); the default is iid;
    an unknown value is an error naming them."""
    assert timesteps.T_SAMPLING == ("iid", "stratified")
    assert build(name).t_sampling == "iid"
    for value in timesteps.T_SAMPLING:
        assert build(name, t_sampling=value).t_sampling == value
    with pytest.raises(ValueError, match=r"t_sampling must be one of \('iid', 'stratified'\)"):
        build(name, t_sampling="sobol")


@pytest.mark.parametrize("name", ["ddpm", "vdm"])
def test_old_t_sampling_spelling_still_reads(name):
    """DDPM's and VDM's former "uniform" is read as "iid", with a DeprecationWarning naming the new value; the model
    is the same as with "iid" (same nll under the same seed)."""
    with pytest.warns(DeprecationWarning, match="'iid'"):
        old = build(name, t_sampling="uniform")
    assert old.t_sampling == "iid"
    new = build(name, t_sampling="iid")
    x = batch(new.spec)
    with torch.no_grad():
        torch.manual_seed(2)
        a = old.nll(x)
        torch.manual_seed(2)
        b = new.nll(x)
    assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(name, t_sampling="iid")  # the new spelling is silent


def test_registered_name_comes_from_the_registry():
    """build_method sets registered_name; a class built directly has "" and shows its class name."""
    from baselines.discrete import MultinomialDiffusion
    from suite.nets import build_net

    m = build("multinomial_diffusion")
    assert m.registered_name == "multinomial_diffusion"
    direct = MultinomialDiffusion(CAT5, build_net(CAT5, "mlp", MLP["backbone_kwargs"], 5, 5), T=4)
    assert direct.registered_name == "" and direct.label == direct.name == "multinomial_diffusion"


def test_evaluator_reads_num_steps_and_registered_name():
    """evaluate() labels rows with registered_name and, for a discrete-time model, reports n_steps=None as its grid
    num_steps and skips step counts finer than the grid."""
    from suite.data.base import Dataset
    from suite.evaluate import evaluate

    class _Data(Dataset):
        def __init__(self):
            self.spec = DataSpec("_k5", "discrete", (4,), num_classes=5, split_sizes={"train": 6, "val": 6, "test": 6})

        def examples(self, split):
            return batch(self.spec, 6)

    m = build("multinomial_diffusion")
    rows = evaluate(m, _Data(), n_steps_list=(None, 2, 8, 100), unit="nats", batch_size=6)
    assert {r["method"] for r in rows} == {"multinomial_diffusion"}
    assert [r["n_steps"] for r in rows] == [8.0, 2.0]  # 8 = num_steps is n=None's grid; 100 > num_steps skipped
    assert all(math.isfinite(r["value"]) for r in rows)


@pytest.mark.parametrize("name", ["bfn_continuous", "bfn_discretised", "bfn_discrete"])
def test_bfn_bound_terms_are_its_loss_and_reconstruction(name):
    """BFN's bound (MATH.md s.2): L^n (or L^inf) + L^r, the two terms named as the baselines name theirs."""
    m = build(name).eval()
    x = batch(m.spec)
    with torch.no_grad():
        torch.manual_seed(5)
        terms = m.bound_terms(x, 3)
        torch.manual_seed(5)
        loss, recon = m.loss(x, 3), m.recon(x)
    assert set(terms) == {"diffusion", "recon"}
    assert torch.equal(terms["diffusion"], loss) and torch.equal(terms["recon"], recon)
