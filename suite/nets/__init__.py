"""Backbones shared by BFN and every baseline (see README.md here for the signature).

    net = build_backbone("unet", (1, 28, 28), in_features=1, out_features=2, block_out_channels=(32, 64))
    net = build_backbone("unet_mnist_paper", (1, 28, 28), 1, 1)     # a preset: backbone + sizes, overridable
    out = net(h, t)   # h (B, *data_shape, in_features), t (B,) in [0, 1] -> (B, *data_shape, out_features)
    net = build_net(spec, "mlp", {"hidden": 64}, in_features=2, out_features=2)  # what the methods' factories call

Backbone modules are imported on first use, so `import suite.nets` does not import diffusers.
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

__all__ = ["build_backbone", "build_net", "default_backbone", "backbone_names", "preset_names", "preset",
           "count_parameters"]

# name -> (module, class)
_BACKBONES = {
    "mlp": ("suite.nets.mlp", "MLP"),
    "conv": ("suite.nets.conv", "ConvNet"),
    "unet": ("suite.nets.unet", "UNet"),
    "transformer": ("suite.nets.transformer", "Transformer"),
    "official": ("suite.nets.official.backbone", "OfficialNet"),  # the official BFN networks (docs/official.md)
}
# preset name -> (backbone, module, function returning size kwargs)
_PRESETS = {
    "unet_mnist_paper": ("unet", "suite.nets.unet", "unet_mnist_paper"),
    "unet_cifar_vdm": ("unet", "suite.nets.unet", "unet_cifar_vdm"),
    "unet_tiny": ("unet", "suite.nets.unet", "unet_tiny"),
    "transformer_text8_paper": ("transformer", "suite.nets.transformer", "transformer_text8_paper"),
    "transformer_tiny": ("transformer", "suite.nets.transformer", "transformer_tiny"),
    # the official BFN networks at full size, key for key (suite/nets/official/configs.py)
    **{f"official_{c}": ("official", "suite.nets.official.configs", f"preset_{c}") for c in (
        "mnist_discrete", "cifar10_discretized_256bins", "cifar10_discretized_16bins",
        "cifar10_continuous_256bins", "cifar10_continuous_16bins", "text8_discrete")},
}


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset(name: str) -> tuple[str, dict]:
    """(backbone name, size kwargs) of a preset."""
    if name not in _PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; known: {', '.join(preset_names())}")
    backbone, mod, fn = _PRESETS[name]
    return backbone, getattr(importlib.import_module(mod), fn)()


def _backbone_class(name: str) -> type[nn.Module]:
    mod, cls = _BACKBONES[name]
    return getattr(importlib.import_module(mod), cls)


def build_backbone(name: str, data_shape, in_features: int, out_features: int, **kwargs) -> nn.Module:
    """Build backbone `name` (or preset `name`, with `kwargs` overriding its sizes)."""
    if name in _PRESETS:
        name, sizes = preset(name)
        kwargs = {**sizes, **kwargs}
    if name not in _BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; backbones: {', '.join(backbone_names())}; presets: {', '.join(preset_names())}"
        )
    cls = _backbone_class(name)
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("data_shape", "in_features", "out_features")]
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ValueError(f"backbone {name!r} has no option(s) {', '.join(bad)}; its options: {', '.join(allowed)}")
    return cls(tuple(data_shape), in_features, out_features, **kwargs)


def default_backbone(spec) -> str:
    """mlp for toys, unet for images (C, H, W), transformer for sequences longer than 64."""
    if len(spec.shape) == 3:
        return "unet"
    if len(spec.shape) == 1 and spec.shape[0] > 64:
        return "transformer"
    return "mlp"


def build_net(spec, backbone: str | None, backbone_kwargs: dict | None, in_features: int, out_features: int) -> nn.Module:
    """The network of a method's factory: backbone (or preset) `backbone` for data set `spec`'s example shape, with
    `backbone_kwargs` as its options; backbone=None picks `default_backbone(spec)`."""
    return build_backbone(backbone or default_backbone(spec), tuple(spec.shape), in_features, out_features,
                          **(backbone_kwargs or {}))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; shared tensors counted once."""
    seen = {id(p): p for p in module.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())
