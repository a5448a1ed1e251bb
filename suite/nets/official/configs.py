"""The official BFN configs (nnaisense/bayesian-flow-networks configs/*.yaml) of the released checkpoints, in
the official format: per part a `class_name` and its `parameters`, as make_bfn reads them.

Each also says which of the suite's methods and data sets it corresponds to (`suite`): the method's
hyperparameters are the config's, in the reference names the suite's factories accept. The official code's
quirks (suite/bfn/continuous.py QUIRKS) are not part of these: they belong to the evaluation protocol, and
suite/reproduce.py adds `quirks="official"` to every method (Gaussian-flow and discrete) under --protocol
reference. The discrete configs' receiver and K = 2 input_convention are the official conventions, kept under
both protocols.
"""

from __future__ import annotations

import copy


def _vdm(out_height: int, min_variance: float, bins: int, discretised: bool) -> dict:
    net = dict(embedding_dim=128, n_blocks=32, n_attention_heads=1, dropout_prob=0.1, norm_groups=32,
               input_channels=3, use_fourier_features=True, attention_everywhere=False, image_size=32)  # fmt: skip
    factory = (dict(class_name="DiscretizedNormalFactory", parameters=dict(num_bins=bins, clip=True)) if discretised
               else dict(class_name="DeltaFactory", parameters={}))  # fmt: skip
    # the continuous-data model's reconstruction: sigma_r = 0.7 sigma1 only when min_variance == 1e-3
    # (a float equality in the official CtsBayesianFlowLoss), else sigma1 (docs/official.md)
    sigma1 = min_variance**0.5
    suite = (dict(method="bfn_discretised", dataset=f"cifar10_{bins}", hparams=dict(min_variance=min_variance,
                                                                                    n_y_samples=10))
             if discretised else
             dict(method="bfn_continuous", dataset=f"cifar10_{bins}",
                  hparams=dict(min_variance=min_variance, sigma_r=(0.7 if min_variance == 1e-3 else 1.0) * sigma1)))
    return dict(
        net=dict(class_name="UNetVDM", parameters=net),
        input_adapter=dict(class_name="FourierImageInputAdapter", parameters=dict(
            input_channels=3, input_shape=[32, 32], output_height=3, add_pos_feats=False, add_mask=False)),
        output_adapter=dict(class_name="OutputAdapter", parameters=dict(input_height=131, output_channels=3,
                                                                        output_height=out_height)),
        bayesian_flow=dict(class_name="CtsBayesianFlow", parameters=dict(min_variance=min_variance)),
        distribution_factory=factory,
        suite=suite,
    )  # fmt: skip


_CONFIGS = {
    "mnist_discrete": dict(
        net=dict(class_name="UNetModel", parameters=dict(
            image_size=28, in_channels=2, model_channels=128, out_channels=128, num_res_blocks=2,
            attention_resolutions=[8, 16], dropout=0.5, channel_mult=[1, 2, 2], conv_resample=True, dims=2,
            num_heads=4, num_heads_upsample=-1, project_input=True, skip=True)),
        input_adapter=dict(class_name="FourierImageInputAdapter", parameters=dict(
            input_channels=1, input_shape=[28, 28], output_height=2, add_pos_feats=False)),
        output_adapter=dict(class_name="OutputAdapter", parameters=dict(input_height=256, output_channels=1,
                                                                        output_height=1)),
        bayesian_flow=dict(class_name="DiscreteBayesianFlow", parameters=dict(n_classes=2, max_sqrt_beta=3,
                                                                              discretize=False)),
        distribution_factory=dict(class_name="BernoulliFactory", parameters={}),
        suite=dict(method="bfn_discrete", dataset="binarized_mnist",
                   hparams=dict(max_sqrt_beta=3.0, receiver="factorised_1d", input_convention="official")),
    ),
    "cifar10_discretized_256bins": _vdm(2, 1e-6, 256, True),
    "cifar10_discretized_16bins": _vdm(2, 1e-3, 16, True),
    "cifar10_continuous_256bins": _vdm(1, 1e-6, 256, False),
    "cifar10_continuous_16bins": _vdm(1, 1e-3, 16, False),
    "text8_discrete": dict(
        net=dict(class_name="GPT", parameters=dict(vocab_size=27, n_layer=24, n_head=12, n_embd=768, dropout=0.0,
                                                   skip=True, bias=True)),
        input_adapter=dict(class_name="TextInputAdapter", parameters=dict(vocab_size=27, seq_len=256,
                                                                          output_size=768, learn_pos_embedding=False)),
        output_adapter=None,
        bayesian_flow=dict(class_name="DiscreteBayesianFlow", parameters=dict(n_classes=27, max_sqrt_beta=0.75)),
        distribution_factory=dict(class_name="CategoricalFactory", parameters={}),
        suite=dict(method="bfn_discrete", dataset="text8",
                   hparams=dict(max_sqrt_beta=0.75, receiver="factorised_1d")),
    ),
}  # fmt: skip

#: the released files (README of the official repository) -> their config
RELEASED = {
    "mnist_ema.pt": "mnist_discrete",
    "cifar10_256d_ema.pt": "cifar10_discretized_256bins",
    "cifar10_16d_ema.pt": "cifar10_discretized_16bins",
    "cifar10_256c_ema.pt": "cifar10_continuous_256bins",
    "text8_ema.pt": "text8_discrete",
}


def config_names() -> list[str]:
    return sorted(_CONFIGS)


def official_config(name: str) -> dict:
    """A deep copy of official config `name` (safe to modify)."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown official BFN config {name!r}; known: {', '.join(config_names())}")
    return copy.deepcopy(_CONFIGS[name])


def _preset(name: str):
    def preset() -> dict:
        return dict(config=name)

    preset.__name__ = f"preset_{name}"
    return preset


# backbone presets `official_<config>` (suite/nets/__init__.py): build_backbone("official_mnist_discrete", ...)
for _name in _CONFIGS:
    globals()[f"preset_{_name}"] = _preset(_name)
