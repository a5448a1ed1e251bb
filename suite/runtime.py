"""Construction and runtime: from a config (or a run folder) to a ready model on its device.

    build(cfg)              -> (method, data): the data set and the registered method, with its backbone
    load_run(run_dir, ...)  -> (cfg, method, data): the one path from a run folder to a trained model
    resolve_device(name)    the torch device a config names (clear errors for a missing GPU)
    init_distributed(type)  join the torchrun process group (DistInfo: rank, world size, local rank)
    runtime_for(name)       both: the process group, then this rank's device
    autocast_for(amp, dev)  the autocast context and grad scaler of an amp setting
    method_options(name)    the method_kwargs a registered method takes

suite/train.py (the training loop), suite/bench.py, suite/cli.py and suite/regression.py build models here.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from suite import checkpoint
from suite.config import ConfigError, RunConfig, apply, parse_overrides
from suite.data import get_dataset
from suite.methods import Method, build_method


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config device={name!r}: not a device; use device=auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config device={name!r} asks for CUDA, but torch sees no GPU; use device=cpu or device=auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"config device={name!r}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0; "
                          "use device=cuda or device=auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"config device={name!r}: this torch has no MPS (Apple GPU) device; use device=cpu")
    return dev


def autocast_for(amp: str, device: torch.device):
    """bf16 autocast on CUDA by default; methods compute their losses in float32 regardless."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return nullcontext(), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def method_options(name: str) -> list[str]:
    """The hyperparameters (method_kwargs keys) a registered method takes, read from its class signature."""
    from suite import methods

    methods._import_all()
    factory = methods._METHODS.get(name)
    if factory is None:
        return []
    skip = {"self", "spec", "net", "backbone", "backbone_kwargs"}
    targets = [factory]
    if not inspect.isclass(factory):
        try:
            ret = typing.get_type_hints(factory).get("return")
        except Exception:  # noqa: BLE001 - an unresolvable annotation: the factory's own signature only
            ret = None
        if inspect.isclass(ret):
            targets.append(ret)
    names = []
    for t in targets:
        for n, p in inspect.signature(t).parameters.items():
            if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in names:
                names.append(n)
    return names


def build(cfg: RunConfig) -> tuple[Method, object]:
    data = get_dataset(cfg.dataset, cfg.data_dir, **cfg.data_kwargs)
    try:
        method = build_method(cfg.method, data.spec, backbone=cfg.backbone,
                              backbone_kwargs=dict(cfg.backbone_kwargs), **cfg.method_kwargs)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not m or m[1] not in cfg.method_kwargs:
            raise
        raise ConfigError(f"config method_kwargs.{m[1]}: method {cfg.method!r} has no option {m[1]!r}; its options: "
                          f"{', '.join(method_options(cfg.method)) or '(none)'}") from None
    return method, data  # build_method has set method.registered_name = cfg.method


def runtime_for(device_name: str) -> tuple[DistInfo, torch.device]:
    """The process group (under torchrun) and this rank's device for a config's `device` setting; a device that
    is not there is refused before the process group is joined."""
    resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    on_gpu = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if on_gpu else "cpu")
    return info, resolve_device(device_name, info.local_rank)


def load_run(run_dir: str | Path, overrides: list[str] | None = None, use_ema: bool = True, *,
             config: RunConfig | None = None, device: torch.device | str | None = None,
             built: tuple[Method, object] | None = None) -> tuple[RunConfig, Method, object]:
    """A run folder (or one of its ckpt-* folders) -> (cfg, method, data), the method holding the checkpoint's
    weights (EMA by default).

    cfg is the config stored in the checkpoint with `overrides` (key=value) applied, or `config` where the
    caller has its own (bench: the comparison's); `built` reuses a (method, data) already built from that config
    instead of building again; `device` moves the method there.
    """
    if config is not None and overrides:
        raise ValueError("load_run: pass overrides or config, not both (apply the overrides to the config)")
    if config is None:
        cfg = apply(RunConfig(), checkpoint.load_state(run_dir)["config"])
        if overrides:
            apply(cfg, parse_overrides(overrides))
        cfg.validate()
    else:
        cfg = config
    method, data = built if built is not None else build(cfg)
    checkpoint.load_weights(run_dir, method, use_ema=use_ema)
    if device is not None:
        method.to(device)
    return cfg, method, data
