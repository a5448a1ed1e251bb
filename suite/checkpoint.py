"""Checkpoints: weights (model and EMA) in safetensors, the rest (optimizer, step, RNG) in a torch file.

Layout of a run directory:
    <run_dir>/ckpt-00001000/weights.safetensors   model.* and ema.* tensors, metadata: method, dataset, shape
    <run_dir>/ckpt-00001000/state.pt              optimizer, step, epoch, batch index, RNG states, config
    <run_dir>/latest                              the name of the newest complete checkpoint

Safety guarantees (tests/test_checkpoint.py kills a real training process at each step of a write):

* Nothing lost. A checkpoint is written under a hidden temporary name (`.ckpt-N.tmp-*`) and renamed into
  place only when both files are complete; then `latest` is replaced atomically; older checkpoints are
  removed only after that. Re-saving a step that already has a checkpoint moves the old copy aside
  (`.ckpt-N.old-*`), renames the new one in, and deletes the old copy last. A kill at any moment leaves
  at least one complete checkpoint, and `latest()` finds the newest complete one even where the kill
  came before `latest` was (re)written. `recover()` (run by `save` and at the start of training) deletes
  half-written temporary folders, puts a moved-aside copy back, and rewrites `latest`.
* Nothing executed. `state.pt` is read with `torch.load(weights_only=True)`: only tensors, numbers,
  strings, lists, tuples and dicts are accepted; a pickle that names any other callable is refused
  unread, with a CheckpointError naming the file. `save` writes only such plain data.
* Write errors (disk full, a read-only folder) raise one CheckpointError naming the checkpoint that is
  still intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message names the file and the fix."""


#: Test hook: `BFNBENCH_TEST_KILL_AT=POINT` (or `POINT@STEP`) makes `save` kill its own process with
#: SIGKILL at that point of the write (of the checkpoint of that step), as a power cut or `kill -9` would.
KILL_ENV = "BFNBENCH_TEST_KILL_AT"
KILL_POINTS = ("after_weights", "after_state", "after_aside", "after_rename", "after_latest")

_NAME = re.compile(r"ckpt-(\d{8})")
_ASIDE = re.compile(r"\.(ckpt-\d{8})\.old-[0-9a-f]+")


def _kill_point(point: str, step: int) -> None:
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    name, _, at = want.partition("@")
    if name not in KILL_POINTS:  # a misspelt point would make a kill test pass without killing anything
        raise ValueError(f"{KILL_ENV}={want!r}: the point must be one of {', '.join(KILL_POINTS)}")
    if name == point and (not at or int(at) == step):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _flat(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def identity(method) -> dict[str, str]:
    """What a checkpoint must match to be loaded into `method`."""
    spec = method.spec
    return {"method": type(method).__name__, "registered_name": getattr(method, "registered_name", ""),
            "dataset": spec.name, "kind": spec.kind, "shape": json.dumps(list(spec.shape)),
            "num_classes": str(spec.num_classes)}


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / "weights.safetensors").is_file() and (path / "state.pt").is_file()


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete `ckpt-*` folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if _NAME.fullmatch(p.name) and _complete(p))


def _asides(run_dir: Path) -> list[Path]:
    """Old copies moved aside by a same-step re-save (always complete: they were visible checkpoints)."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if _ASIDE.fullmatch(p.name) and _complete(p)),
                  key=lambda p: _ASIDE.fullmatch(p.name)[1])


def _plain(obj, where: str = "state") -> None:
    """Refuse anything `torch.load(weights_only=True)` would refuse, before it is written."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.Size)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointError(f"checkpoint {where}: key {k!r} is a {type(k).__name__}; only plain data "
                                      "(numbers, strings, lists, dicts, tensors) is saved")
            _plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__name__}; only plain data "
                          "(numbers, strings, lists, dicts, tensors) is saved, so that loading never runs code: "
                          "convert it (e.g. .tolist() or str()) before saving")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_latest(run_dir: Path, name: str) -> None:
    fd, ptr = tempfile.mkstemp(prefix=".latest.", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
        os.replace(ptr, run_dir / "latest")
    finally:
        if os.path.exists(ptr):
            os.unlink(ptr)


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def recover(run_dir: str | Path, keep: int | None = 1) -> list[str]:
    """Repair what a killed `save` left; return what was done, in words.

    Deletes half-written `.ckpt-*.tmp-*` folders and stale `.latest.*` / `.config.json.tmp` files, puts back a checkpoint
    moved aside by an interrupted same-step re-save (or deletes the aside copy when its successor is in
    place), points `latest` at the newest complete checkpoint, and (with `keep`) removes all but the
    `keep` newest complete checkpoints.
    """
    run_dir = Path(run_dir)
    done: list[str] = []
    if not run_dir.is_dir():
        return done
    for p in run_dir.iterdir():
        if p.name.startswith(".ckpt-") and not _ASIDE.fullmatch(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)  # a half-written (or never renamed) copy
            done.append(f"deleted the half-written {p.name}")
        elif (p.name.startswith(".latest.") or p.name == ".config.json.tmp") and p.is_file():
            p.unlink(missing_ok=True)
    for p in run_dir.iterdir():
        m = _ASIDE.fullmatch(p.name)
        if not m:
            continue
        visible = run_dir / m[1]
        if _complete(visible) or not _complete(p):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"deleted {p.name}, replaced by {visible.name}")
        else:
            if visible.exists():
                shutil.rmtree(visible, ignore_errors=True)
            os.replace(p, visible)
            done.append(f"restored {visible.name} from {p.name}")
    found = checkpoints(run_dir)
    if found:
        ptr = run_dir / "latest"
        if not ptr.is_file() or ptr.read_text().strip() != found[-1].name:
            _write_latest(run_dir, found[-1].name)
            done.append(f"pointed latest at {found[-1].name}")
        if keep is not None:
            for p in found[: max(0, len(found) - keep)]:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"deleted the older {p.name}")
    return done


def save(run_dir: str | Path, step: int, method, ema, optimizer, extra: dict, keep: int = 1) -> Path:
    """Write checkpoint `ckpt-<step>` of a run; never remove the last complete checkpoint before its
    successor is in place (see the module docstring). A write error raises CheckpointError."""
    run_dir = Path(run_dir)
    state = {"optimizer": optimizer.state_dict() if optimizer is not None else None, "step": step, **extra}
    _plain(state)
    name = f"ckpt-{step:08d}"
    final = run_dir / name
    tmp = aside = None
    prev = _latest_or_none(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        recover(run_dir, keep=None)
        prev = _latest_or_none(run_dir)  # where recover() put a moved-aside copy back
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=run_dir))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
        tensors = _flat("model", method)
        if ema is not None:
            tensors.update(_flat("ema", ema))
        save_file(tensors, str(tmp / "weights.safetensors"), metadata=identity(method))
        _fsync(tmp / "weights.safetensors")
        _kill_point("after_weights", step)
        torch.save(state, tmp / "state.pt")
        _fsync(tmp / "state.pt")
        _kill_point("after_state", step)
        if final.exists():  # the same step again: move the old copy aside, delete it only at the end
            aside = run_dir / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, aside)
            _kill_point("after_aside", step)
        os.replace(tmp, final)
        tmp = None
        _kill_point("after_rename", step)
        _write_latest(run_dir, name)
        _kill_point("after_latest", step)
    except OSError as e:
        if aside is not None and aside.exists() and not final.exists():
            os.replace(aside, final)  # put the old copy back
        kept = f"the previous checkpoint {prev} is intact" if prev is not None else "no earlier checkpoint exists"
        raise CheckpointError(f"writing checkpoint {final} failed ({_why(e)}); {kept}. Free disk space or fix "
                              f"the folder {run_dir}, then continue with --resume") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    old = [p for p in checkpoints(run_dir) if p.name < name]
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (None if there is none).

    Normally the one `latest` names; after a kill between renaming a checkpoint in and rewriting `latest`
    (or before `latest` was first written) the newest complete `ckpt-*` folder; after a kill in the middle
    of a same-step re-save, the complete old copy that was moved aside. Reads only, never writes."""
    run_dir = Path(run_dir)
    ptr = run_dir / "latest"
    found = checkpoints(run_dir) or _asides(run_dir)
    if found:
        return found[-1]
    if ptr.is_file():
        path = run_dir / ptr.read_text().strip()
        raise CheckpointError(f"{ptr} points at {path}, which is missing or incomplete, and {run_dir} holds no "
                              "other complete checkpoint; the run folder was edited by hand: delete it or "
                              "restore the checkpoint")
    return None


def _latest_or_none(run_dir: Path) -> Path | None:
    try:
        return latest(run_dir)
    except CheckpointError:
        return None


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
    """Load model (or EMA) weights into `method`, refusing a checkpoint of another method or shape, or one
    whose parameters hold NaN or infinite values."""
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
    params = {n for n, _ in method.named_parameters()}
    bad = sorted(k for k, v in state.items() if k in params and v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{f}: {len(bad)} {prefix.rstrip('.')} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run diverged before "
                              "this checkpoint was written: retrain it (lower lr or grad_clip)")
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: weights do not fit this model ({e}); the backbone or its size differs "
                              "from the one the checkpoint was trained with") from None
    return meta


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_state(path: str | Path) -> dict:
    """The optimizer, step, RNG states, config and history of a checkpoint: plain data only.

    Read with `weights_only=True`: a pickle that would call anything (an object with `__reduce__`, a
    class, a function) is refused before anything in it runs."""
    f = resolve(path) / "state.pt"
    if not f.is_file():
        raise CheckpointError(f"{f} is missing; the checkpoint folder is incomplete: delete it and resume from "
                              "an earlier checkpoint or retrain")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "Weights only load failed" in text or "WeightsUnpickler" in text:
            m = _GLOBAL.search(text)
            what = f"it names {m[1]}" if m else "it holds pickle instructions other than plain data"
            raise CheckpointError(f"{f} was refused unread: {what}, and loading it could run arbitrary code "
                                  "(bfnbench writes only tensors, numbers, strings, lists and dicts there); "
                                  "do not use this file: delete the checkpoint folder or retrain") from None
        raise CheckpointError(f"{f} cannot be read ({type(e).__name__}: {' '.join(text.split())}); delete the "
                              "checkpoint folder and resume from an earlier one") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f} holds a {type(state).__name__}, not the dict bfnbench writes; it is not a "
                              "bfnbench checkpoint: delete the checkpoint folder or retrain")
    return state
