"""Reading the official pretrained files: data only, strict, with errors that name the file.

    sd = read_state_dict("mnist_ema.pt")              # torch.load(weights_only=True) or safetensors
    load_official(net, "mnist_ema.pt")                # OfficialNet; strict=True, no key mapping needed

A file that is truncated, not a state dict, pickles code, or holds another config's weights raises
OfficialCheckpointError naming the file, the config expected and (where the shapes say so) the config
the file is actually of.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from suite.checkpoint import CheckpointError

Tensor = torch.Tensor


class OfficialCheckpointError(CheckpointError):
    """An official pretrained file that cannot be loaded into the network asked for."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file (expected an official BFN state dict, e.g. mnist_ema.pt)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses any callable the pickle names
        raise OfficialCheckpointError(
            f"{path}: refused, not plain tensor data ({' '.join(str(e).split())[:200]}); official checkpoints are "
            "torch.save(model.state_dict()) files and load with weights_only=True") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise OfficialCheckpointError(
            f"{path}: cannot be read as a torch state dict ({' '.join(str(e).split())[:200]}); "
            "the file is truncated or not a checkpoint: download it again") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise OfficialCheckpointError(f"{path}: holds {type(sd).__name__}, not a state dict of named tensors")
    return sd


def _which_configs(sd: dict[str, Tensor]) -> list[str]:
    """The official configs whose full-size layout this state dict matches (16 and 256 bins share one)."""
    from suite.nets.official.backbone import build_official_module
    from suite.nets.official.configs import config_names, official_config

    found = []
    for name in config_names():
        with torch.device("meta"):
            ref = build_official_module(official_config(name))
        ref_sd = {f"net.{k}": v for k, v in ref.state_dict().items()}
        if ref_sd.keys() == sd.keys() and all(tuple(ref_sd[k].shape) == tuple(sd[k].shape) for k in sd):
            found.append(name)
    return found


def check_layout(net, sd: dict[str, Tensor], path: str | Path) -> None:
    """Every key of `net.state_dict()` present with its shape, nothing extra; else one error naming the file."""
    want = net.state_dict()
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shape = [f"{k} {tuple(sd[k].shape)} (expected {tuple(want[k].shape)})"
             for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]  # fmt: skip
    if not (missing or extra or shape):
        return
    name = getattr(net, "config_name", "?")
    actual = _which_configs(sd)
    what = []
    if missing:
        what.append(f"{len(missing)} missing key(s) (first: {', '.join(missing[:3])})")
    if extra:
        what.append(f"{len(extra)} unexpected key(s) (first: {', '.join(extra[:3])})")
    if shape:
        what.append(f"{len(shape)} shape mismatch(es) (first: {'; '.join(shape[:2])})")
    hint = (f"; the file has the layout of the official {' / '.join(map(repr, actual))} network" if actual else
            "; it matches no official config at full size")  # fmt: skip
    raise OfficialCheckpointError(
        f"{Path(path)}: not a checkpoint of the official {name!r} network: {'; '.join(what)}{hint}")


def load_official(net, path: str | Path) -> dict[str, str]:
    """Load an official pretrained file into an OfficialNet, strictly; returns provenance."""
    sd = read_state_dict(path)
    check_layout(net, sd, path)
    net.load_state_dict(sd, strict=True)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise OfficialCheckpointError(f"{Path(path)}: non-finite weights in {', '.join(bad[:3])}")
    return {"checkpoint": str(path), "official_config": getattr(net, "config_name", "custom")}
