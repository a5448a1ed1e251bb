"""The three BFN methods through the registry (suite/methods.py contract) with the shared backbones."""

import pytest
import torch

from suite.bfn import ContinuousBFN, DiscreteBFN, DiscretisedBFN
from suite.data.base import DataSpec
from suite.methods import build_method, method_names

SPECS = {
    "swiss_roll": DataSpec("swiss_roll", "continuous", (2,)),
    "image": DataSpec("image", "discretised", (1, 8, 8), 256),
    "heartbeat": DataSpec("heartbeat", "discrete", (20,), 2),
    "text": DataSpec("text", "discrete", (16,), 27),
}
CASES = [
    ("bfn_continuous", "swiss_roll", "mlp", ContinuousBFN),
    ("bfn_continuous", "image", "conv", ContinuousBFN),
    ("bfn_discretised", "image", "conv", DiscretisedBFN),
    ("bfn_discrete", "heartbeat", "mlp", DiscreteBFN),
    ("bfn_discrete", "text", "transformer", DiscreteBFN),
]


def _batch(spec, B=3):
    if spec.kind == "discrete":
        return torch.randint(0, spec.num_classes, (B, *spec.shape))
    if spec.kind == "discretised":
        return (2 * torch.randint(0, spec.num_classes, (B, *spec.shape)) + 1).float() / spec.num_classes - 1
    return torch.randn(B, *spec.shape)


def test_registered():
    assert {"bfn_continuous", "bfn_discretised", "bfn_discrete"} <= set(method_names())


@pytest.mark.parametrize("name, data, backbone, cls", CASES)
def test_contract_with_shared_backbones(name, data, backbone, cls):
    """loss / nll per example (B,) float32 nats, finite, differentiable; sample shaped (num, *shape)."""
    spec = SPECS[data]
    kw = {"channels": 8, "n_blocks": 1} if backbone == "conv" else {}
    model = build_method(name, spec, backbone=backbone, backbone_kwargs=kw)
    assert isinstance(model, cls)
    x = _batch(spec)
    for n in (None, 3):
        loss, nll = model.loss(x, n), model.nll(x, n)
        assert loss.shape == nll.shape == (3,) and loss.dtype == nll.dtype == torch.float32
        assert torch.isfinite(loss).all() and torch.isfinite(nll).all()
    model.loss(x).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.net.parameters() if p.requires_grad)
    assert model.sample(2, 3, torch.Generator().manual_seed(0)).shape == (2, *spec.shape)


def test_reference_config_names_and_paper_names():
    """min_variance = sigma1^2 and max_sqrt_beta = sqrt(beta1) (MATH.md s.6) are accepted and converted."""
    m = build_method("bfn_discretised", SPECS["image"], backbone="conv", backbone_kwargs={"channels": 8, "n_blocks": 1},
                     min_variance=1e-6)  # fmt: skip
    assert m.sigma1 == pytest.approx(1e-3)
    d = build_method("bfn_discrete", SPECS["heartbeat"], backbone="mlp", max_sqrt_beta=3.0, receiver="factorised_1d")
    assert d.beta1 == pytest.approx(9.0) and d.receiver == "factorised_1d"
    with pytest.raises(ValueError, match="not both"):
        build_method("bfn_discrete", SPECS["heartbeat"], backbone="mlp", max_sqrt_beta=3.0, beta1=9.0)


def test_wrong_data_kind_or_hyperparameter_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a discretised data set"):
        build_method("bfn_discretised", SPECS["swiss_roll"], backbone="mlp")
    with pytest.raises(ValueError, match="needs a discrete data set"):
        build_method("bfn_discrete", SPECS["swiss_roll"], backbone="mlp")
    with pytest.raises(ValueError, match=r"sigma1 must lie in \(0, 1\)"):
        build_method("bfn_continuous", SPECS["swiss_roll"], backbone="mlp", sigma1=2.0)
    with pytest.raises(TypeError):
        build_method("bfn_continuous", SPECS["swiss_roll"], backbone="mlp", sigma=0.1)
