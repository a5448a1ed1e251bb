"""Run configuration: a typed dataclass, loadable from YAML, overridable with `key=value`.

    cfg = load_config("suite/experiments/embedded/bfn_mnist_binarized.yaml", ["max_steps=200", "method_kwargs.beta1=3"])

Values in overrides are parsed as YAML (`lr=3e-4`, `betas=[0.9,0.98]`, `eval_n_steps=[10,100,inf]`).
Dotted keys reach into dict fields (`method_kwargs.sigma1=0.001`). In step lists, `inf` (or `null`)
means continuous time.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """An impossible or unknown configuration value; the message names the key and the fix."""


#: the device names `device=` accepts (suite/train.py resolve_device checks that the device exists)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


@dataclass
class RunConfig:
    name: str = "run"
    method: str = "bfn_discrete"
    dataset: str = "mnist_embedded_binarized"
    backbone: str = "conv"
    backbone_kwargs: dict = field(default_factory=dict)
    method_kwargs: dict = field(default_factory=dict)
    data_dir: str | None = None
    data_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    # optimisation (the BFN paper: AdamW, EMA, grad-norm clipping, constant LR)
    batch_size: int = 32
    max_steps: int = 1000
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    train_n_steps: int | None = None  # None: train on the continuous-time loss
    amp: str = "auto"  # auto (bf16 on CUDA, none on CPU) | bf16 | fp16 | none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bookkeeping
    out_dir: str = "results/checkpoints"
    val_every: int = 250
    val_examples: int = 512
    ckpt_every: int = 250
    log_every: int = 25
    # evaluation
    eval_split: str = "test"
    eval_n_steps: list = field(default_factory=lambda: [10, 25, 100, None])
    eval_repeats: int = 4
    eval_batch_size: int = 100
    eval_examples: int | None = None  # None: the whole split

    def validate(self) -> RunConfig:
        def need(cond, key, msg):
            if not cond:
                raise ConfigError(f"config {key}={getattr(self, key, '?')!r}: {msg}")

        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.max_steps >= 0, "max_steps", "must be >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two numbers in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.grad_clip > 0, "grad_clip", "must be > 0 (use a large value to disable clipping)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        need(self.train_n_steps is None or self.train_n_steps >= 1, "train_n_steps", "must be >= 1, or null for continuous time")
        need(self.amp in ("auto", "bf16", "fp16", "none"), "amp", "must be auto, bf16, fp16 or none")
        need(self.eval_split in ("train", "val", "test"), "eval_split", "must be train, val or test")
        need(all(n is None or (isinstance(n, int) and n >= 1) for n in self.eval_n_steps), "eval_n_steps",
             "every step count must be an integer >= 1, or inf for continuous time")
        need(self.eval_repeats >= 1, "eval_repeats", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        for key in ("val_every", "ckpt_every", "log_every"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        need(bool(DEVICE.fullmatch(str(self.device))), "device", "must be auto, cpu, cuda, cuda:N or mps")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_steps(v):
    if v is None or (isinstance(v, str) and v.lower() in ("inf", "none", "null", "continuous")):
        return None
    if isinstance(v, float) and math.isinf(v):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _coerce(key: str, value, hint):
    """Coerce a YAML value to a field's type, with a clear error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if key in ("eval_n_steps",):
        value = value if isinstance(value, list) else [value]
        return [_parse_steps(v) for v in value]
    if key == "train_n_steps":
        return _parse_steps(value)
    if value is None:
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
            return None
        raise ConfigError(f"config {key}: null is not allowed here")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    base = typing.get_origin(base) or base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if base is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if base is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config {key}={value!r}: expected {getattr(base, '__name__', base)}") from None
    return value


def _hints() -> dict:
    return typing.get_type_hints(RunConfig)


def apply(cfg: RunConfig, updates: dict) -> RunConfig:
    hints = _hints()
    for key, value in updates.items():
        top, _, rest = key.partition(".")
        if top not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key {top!r}; known keys: {known}")
        if rest:
            if typing.get_origin(hints[top]) is not dict and hints[top] is not dict:
                raise ConfigError(f"config {key}: {top} is not a dict, so {top}.{rest} means nothing")
            d = dict(getattr(cfg, top))
            d[rest] = value
            setattr(cfg, top, d)
        else:
            setattr(cfg, top, _coerce(top, value, hints[top]))
    return cfg


def _numbers(v):
    """YAML 1.1 reads `1e-6` as a string; read every string that is a number as a number."""
    if isinstance(v, str):
        for conv in (int, float):
            try:
                return conv(v)
            except ValueError:
                pass
        return v
    if isinstance(v, list):
        return [_numbers(a) for a in v]
    if isinstance(v, dict):
        return {k: _numbers(a) for k, a in v.items()}
    return v


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where (PyYAML's own message spans several lines)."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. n_steps=10 or method_kwargs.beta1=3)")
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = _numbers(yaml.safe_load(raw)) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)}); close its "
                              "brackets or quotes, e.g. betas=[0.9,0.99] or name='a:b'") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: RunConfig | None = None) -> RunConfig:
    cfg = dataclasses.replace(base) if base is not None else RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = _numbers(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(e)}); fix that line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read ({getattr(e, 'strerror', None) or e}); "
                              "pass a YAML text file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of key: value")
        apply(cfg, data)
    if overrides:
        apply(cfg, parse_overrides(overrides))
    return cfg.validate()


def _probe(folder: Path) -> None:
    """Create and delete a file in `folder` (an OSError if that is impossible)."""
    fd, probe = tempfile.mkstemp(prefix=".bfnbench-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_writable(folder: str | Path, label: str, fix: str) -> None:
    """Refuse, before any work starts, an output folder that cannot be written.

    Creates nothing that stays: an existing folder is probed with a temporary file; a folder still to be
    made is checked through its nearest existing ancestor, which must be a folder that can be written.
    Raises ConfigError("<label> <folder>: cannot write there (<why>); <fix>")."""
    folder = Path(folder)
    probe_at = folder
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    why = None
    if probe_at.exists() and not probe_at.is_dir():
        why = f"{probe_at} is a file, not a folder"
    else:
        try:
            _probe(probe_at)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                reason = f"{reason}: {probe_at} is read-only"
            why = reason
    if why is not None:
        raise ConfigError(f"{label} {folder}: cannot write there ({why}); {fix}")
