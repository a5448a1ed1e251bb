"""Sohl-Dickstein et al. 2015 (arXiv 1503.03585) Gaussian and binomial diffusion, registered as methods
`sohl_gaussian` and `sohl_binomial`."""

from __future__ import annotations

from torch import nn

from baselines.sohl2015.binomial import SohlBinomial
from baselines.sohl2015.gaussian import SohlGaussian
from suite.data.base import DataSpec
from suite.methods import register_method
from suite.nets import build_net

__all__ = ["SohlGaussian", "SohlBinomial"]


@register_method("sohl_gaussian")
def build_sohl_gaussian(
    spec: DataSpec, backbone: str = "mlp", backbone_kwargs: dict | None = None, net: nn.Module | None = None, **hp
) -> SohlGaussian:
    """Gaussian diffusion; hyperparameters as SohlGaussian (T, n_basis, beta1, schedule, reverse_param, data_shift,
    data_scale, net_time_input, max_batch)."""
    if spec.kind not in ("continuous", "discretised"):
        raise ValueError(
            f"sohl_gaussian models continuous or discretised data; {spec.name!r} is {spec.kind}: "
            "use sohl_binomial for binary data"
        )
    if net is None:
        net = build_net(spec, backbone, backbone_kwargs, 1, 2 * hp.get("n_basis", 10))
    return SohlGaussian(spec, net, **hp)


@register_method("sohl_binomial")
def build_sohl_binomial(
    spec: DataSpec, backbone: str = "mlp", backbone_kwargs: dict | None = None, net: nn.Module | None = None, **hp
) -> SohlBinomial:
    """Binomial diffusion for binary data; hyperparameters as SohlBinomial (T, n_basis, p1, null_mean)."""
    if spec.kind != "discrete" or spec.num_classes != 2:
        raise ValueError(
            f"sohl_binomial models binary data (discrete, K = 2); {spec.name!r} is {spec.kind} with "
            f"K = {spec.num_classes}: use sohl_gaussian for continuous or discretised data"
        )
    if net is None:
        net = build_net(spec, backbone, backbone_kwargs, 1, hp.get("n_basis", 10))
    return SohlBinomial(spec, net, **hp)
