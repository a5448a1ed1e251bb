"""Checkpoints: weights (model and EMA) in safetensors, the rest (optimizer, step, RNG) in a torch file.

Layout of a run directory:
    <run_dir>/ckpt-00001000/weights.safetensors   model.* and ema.* tensors, metadata: method, dataset, shape
    <run_dir>/ckpt-00001000/state.pt              optimizer, step, epoch, batch index, RNG states, config
    <run_dir>/latest                              the name of the newest complete checkpoint

A checkpoint directory is written under a temporary name and renamed when complete, then `latest` is
replaced atomically; older checkpoints are removed only after that. A crash or kill at any moment leaves
the previous checkpoint intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message names the file and the fix."""


def _flat(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def identity(method) -> dict[str, str]:
    """What a checkpoint must match to be loaded into `method`."""
    spec = method.spec
    return {"method": type(method).__name__, "registered_name": getattr(method, "registered_name", ""),
            "dataset": spec.name, "kind": spec.kind, "shape": json.dumps(list(spec.shape)),
            "num_classes": str(spec.num_classes)}


def save(run_dir: str | Path, step: int, method, ema, optimizer, extra: dict, keep: int = 1) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    final = run_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=run_dir))
    try:
        tensors = _flat("model", method)
        if ema is not None:
            tensors.update(_flat("ema", ema))
        save_file(tensors, str(tmp / "weights.safetensors"), metadata=identity(method))
        torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None, "step": step, **extra},
                   tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    fd, ptr = tempfile.mkstemp(prefix=".latest.", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
    os.replace(ptr, run_dir / "latest")
    old = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest(run_dir: str | Path) -> Path | None:
    ptr = Path(run_dir) / "latest"
    if not ptr.is_file():
        return None
    path = Path(run_dir) / ptr.read_text().strip()
    if not (path / "weights.safetensors").is_file():
        raise CheckpointError(f"{ptr} points at {path}, which has no weights.safetensors; the run folder was "
                              "edited by hand: delete it or restore the checkpoint")
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, a run directory (its latest checkpoint) or a weights file -> checkpoint dir."""
    path = Path(path)
    if path.is_file() and path.name == "weights.safetensors":
        return path.parent
    if (path / "weights.safetensors").is_file():
        return path
    if path.is_dir():
        found = latest(path)
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint at {path}: pass a run folder written by `bfnbench train`, "
                          "or one of its ckpt-* folders")


def load_weights(path: str | Path, method, use_ema: bool = True) -> dict[str, str]:
    """Load model (or EMA) weights into `method`, refusing a checkpoint of another method or shape."""
    ckpt = resolve(path)
    f = ckpt / "weights.safetensors"
    try:
        tensors = load_file(str(f))
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{f} cannot be read ({type(e).__name__}: {e}); it is corrupt: delete it and "
                              "resume from an earlier checkpoint or retrain") from None
    want = identity(method)
    diffs = [f"{k}: checkpoint {meta.get(k)!r} vs model {v!r}" for k, v in want.items()
             if k != "registered_name" and meta.get(k) != v]
    if diffs:
        raise CheckpointError(f"{f} was written for another method or data shape ({'; '.join(diffs)}); "
                              "build the model with the checkpoint's own config (its state.pt holds it)")
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: weights do not fit this model ({e}); the backbone or its size differs "
                              "from the one the checkpoint was trained with") from None
    return meta


def load_state(path: str | Path) -> dict:
    f = resolve(path) / "state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{f} cannot be read ({type(e).__name__}: {e}); delete the checkpoint folder "
                              "and resume from an earlier one") from None
