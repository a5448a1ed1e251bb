"""Comparisons: BFN and its diffusion baselines on one data set, with everything that must match shared.

A comparison is one YAML file under `suite/experiments/<scale>/` (scales: `embedded` for a 2-core
CPU, `paper` for GPUs):

    name: mnist_binarized
    dataset: mnist_embedded_binarized      # a registered data set
    paper_dataset: binarized_mnist         # the published data set it stands in for (tables)
    backbone: conv                         # shared by every method of the comparison
    backbone_kwargs: {channels: 32, blocks: 3}
    train: {batch_size: 32, max_steps: 1500, lr: 1.0e-3}   # shared RunConfig fields
    eval: {eval_n_steps: [10, 25, 100, inf], eval_repeats: 4, eval_examples: 1000}
    methods:                               # method -> its own hyperparameters, and optionally
      bfn_discrete: {beta1: 3.0}           #   train: / eval: / backbone_kwargs: of its own (never the
      sohl_binomial: {T: 100, backbone_kwargs: {channels: 30}}   # shared training settings)

Fairness is enforced, not hoped for: every method of a comparison gets the same backbone class and
size, optimizer, batch size, number of updates and data order (same seed), and `check_fair` refuses
parameter counts more than 5 % apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from suite.config import ConfigError, RunConfig, _numbers, apply, parse_overrides

HERE = Path(__file__).resolve().parent
SCALES = ("embedded", "paper")
SHARED_TRAIN_KEYS = ("batch_size", "max_steps", "lr", "betas", "weight_decay", "adam_eps", "grad_clip", "ema_decay",
                     "seed", "amp")


@dataclass
class Comparison:
    name: str
    dataset: str
    paper_dataset: str
    backbone: str
    methods: dict
    backbone_kwargs: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    description: str = ""
    scale: str = "embedded"
    #: the learning-rate search every method gets: {lr: [...], steps: N} (suite/bench.py tuned_config)
    tune: dict = field(default_factory=dict)
    #: how evaluation resolves its standard errors: {group, min_groups, max_groups} (evaluate_resolved)
    resolve: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.tune:
            bad = sorted(set(self.tune) - {"lr", "steps"})
            lrs, steps = self.tune.get("lr"), self.tune.get("steps")
            if bad or not isinstance(lrs, list) or not lrs or not all(isinstance(v, (int, float)) and v > 0 for v in lrs):
                raise ConfigError(f"comparison {self.name}: tune must be {{lr: [positive learning rates], steps: N}}, "
                                  f"got {self.tune!r}")
            max_steps = self.train.get("max_steps", RunConfig.max_steps)
            if not isinstance(steps, int) or not 1 <= steps <= max_steps:
                raise ConfigError(f"comparison {self.name}: tune.steps must be an integer in [1, max_steps={max_steps}], "
                                  f"got {steps!r}")
        bad = sorted(set(self.resolve) - {"group", "min_groups", "max_groups"})
        if bad:
            raise ConfigError(f"comparison {self.name}: unknown resolve key(s) {bad}; use group, min_groups, max_groups")

    def run_config(self, method: str, out_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
        """The RunConfig of one method in this comparison; `overrides` (key=value) apply to all methods."""
        if method not in self.methods:
            raise ConfigError(f"comparison {self.name!r} has no method {method!r}; it has {sorted(self.methods)}")
        mk = dict(self.methods[method] or {})
        per_method_train = mk.pop("train", {})  # e.g. train_n_steps for discrete-time-only baselines
        per_method_eval = mk.pop("eval", {})  # e.g. the step counts a discrete-time model can be evaluated at
        # the same backbone class; its size may be tuned per method so parameter counts match (check_fair)
        per_method_backbone = mk.pop("backbone_kwargs", {})
        bad = sorted(set(per_method_train) & set(SHARED_TRAIN_KEYS))
        if bad:
            raise ConfigError(f"comparison {self.name}: method {method} overrides shared training setting(s) {bad}; "
                              "a fair comparison keeps them equal")
        cfg = RunConfig(name=f"{self.name}__{method}", method=method, dataset=self.dataset, backbone=self.backbone,
                        backbone_kwargs={**self.backbone_kwargs, **per_method_backbone}, method_kwargs=mk,
                        data_kwargs=dict(self.data_kwargs), out_dir=str(out_dir))
        apply(cfg, {**self.train, **per_method_train, **self.eval, **per_method_eval})
        if overrides:
            apply(cfg, parse_overrides(overrides))
        return cfg.validate()


def load_comparison(path: str | Path, scale: str = "embedded") -> Comparison:
    path = Path(path)
    data = _numbers(yaml.safe_load(path.read_text()) or {})
    names = {f.name for f in dataclasses.fields(Comparison)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a comparison has {sorted(names)}")
    try:
        return Comparison(scale=scale, **data)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_comparisons(scale: str = "embedded", only: list[str] | None = None) -> list[Comparison]:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; use one of {SCALES}")
    comps = [load_comparison(p, scale) for p in sorted((HERE / scale).glob("*.yaml"))]
    if only:
        missing = sorted(set(only) - {c.name for c in comps})
        if missing:
            raise ConfigError(f"unknown comparison(s) {missing}; {scale} has {[c.name for c in comps]}")
        comps = [c for c in comps if c.name in only]
    return comps


def check_fair(counts: dict[str, int], tolerance: float = 0.05) -> None:
    """Parameter counts of the methods of one comparison within `tolerance` of each other."""
    lo, hi = min(counts.values()), max(counts.values())
    if hi > lo * (1 + tolerance):
        raise ConfigError(f"parameter counts differ by more than {tolerance:.0%}: {counts}; adjust the backbone "
                          "or the method's readout so the comparison is fair")
