"""Run records: the tidy results schema, provenance, atomic Parquet + CSV files, and loading.

One row per (run, method, dataset, split, n_steps, metric). One Parquet file per run (plus a CSV
mirror for people and diffs), written atomically, so concurrent runs never collide and a killed run
leaves either a whole file or none. `load_results(folder)` returns one DataFrame; a corrupt, partial
or foreign file is reported and skipped, never merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT / "results" / "reference"

#: column -> pandas dtype. `n_steps`: inf = continuous time, NaN = not applicable.
SCHEMA: dict[str, str] = {
    "run_id": "string",
    "method": "string",
    "dataset": "string",
    "split": "string",
    "metric": "string",  # e.g. nll, loss, reconstruction
    "n_steps": "float64",
    "value": "float64",
    "stderr": "float64",
    "unit": "string",
    "bound": "string",  # "<=" upper bound on NLL, "=" exact, ">=K" Sohl-Dickstein's lower bound K
    "n_repeats": "Int64",
    "n_examples": "Int64",
    "n_dims": "Int64",
    "protocol": "string",  # evaluation protocol in words: t-sampling, crops/stride, receiver...
    "seed": "Int64",
    "n_params": "Int64",  # trainable parameters of the evaluated model
    "train_info": "string",  # JSON: backbone, optimizer, lr, batch size, updates, EMA, data order seed, train time
    "git_sha": "string",
    "git_dirty": "boolean",
    "versions": "string",  # JSON: python, torch, diffusers, numpy, pandas, suite
    "device": "string",
    "config_hash": "string",
    "created": "string",  # ISO 8601 UTC
}
REQUIRED = ("method", "dataset", "split", "metric", "value", "unit", "bound")
BOUNDS = ("<=", "=", ">=K", "parzen")


class ResultsError(RuntimeError):
    """A results file or row that cannot be written or read; the message names the file and the fix."""


# ---------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "numpy", "pandas", "bfnbench"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "absent"
    return versions


def device_name(device=None) -> str:
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class Provenance:
    git_sha: str
    git_dirty: bool
    versions: str
    device: str

    @classmethod
    def collect(cls, device=None) -> Provenance:
        sha = _git("rev-parse", "HEAD") or "unknown"
        status = _git("status", "--porcelain", "--untracked-files=no")
        return cls(
            git_sha=sha,
            git_dirty=bool(status) if status is not None else True,
            versions=json.dumps(package_versions(), sort_keys=True),
            device=device_name(device),
        )


def config_hash(config: Mapping) -> str:
    """A short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- rows and tables


#: the columns of SCHEMA a result row carries itself; the others are run-wide (filled by make_table)
ROW_COLUMNS = ("method", "dataset", "split", "metric", "n_steps", "value", "stderr", "unit", "bound", "n_repeats",
               "n_examples", "n_dims", "protocol", "seed", "n_params", "train_info")


def make_row(*, method: str, dataset: str, split: str, metric: str, value: float, unit: str, bound: str,
             n_steps: float | None = None, stderr: float | None = None, n_repeats: int | None = None,
             n_examples: int | None = None, n_dims: int | None = None, protocol: str | None = None,
             seed: int | None = None, n_params: int | None = None, train_info: str | None = None) -> dict:
    """One tidy result row (the one constructor of rows; make_table turns rows into a run's table).

    `value` and `stderr` are in `unit` (one of suite.units.UNITS); `n_steps` is inf for continuous time (or a
    discrete-time model's full grid), NaN where not applicable; `bound` is one of BOUNDS. A column left None is
    left out of the row (make_table fills it: NaN / <NA>); `make_row(**row, n_params=...)` adds to a row.
    """
    from suite.units import UNITS

    if bound not in BOUNDS:
        raise ResultsError(f"result row {method}/{dataset}: bound must be one of {BOUNDS}, got {bound!r}")
    if unit not in UNITS:
        raise ResultsError(f"result row {method}/{dataset}: unit must be one of {UNITS} (suite/units.py), got {unit!r}")
    given = dict(method=method, dataset=dataset, split=split, metric=metric, n_steps=n_steps, value=value,
                 stderr=stderr, unit=unit, bound=bound, n_repeats=n_repeats, n_examples=n_examples, n_dims=n_dims,
                 protocol=protocol, seed=seed, n_params=n_params, train_info=train_info)
    return {k: given[k] for k in ROW_COLUMNS if given[k] is not None}


def make_table(rows: Iterable[Mapping] | pd.DataFrame, *, run_id: str | None = None,
               provenance: Provenance | None = None, config: Mapping | None = None) -> pd.DataFrame:
    """Rows (dicts with at least REQUIRED keys) -> a validated DataFrame in SCHEMA order and dtypes.

    Run-wide fields (run_id, provenance, config hash, creation time) fill columns the rows leave empty.
    """
    df = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows.copy())
    if df.empty:
        raise ResultsError("no result rows to write: a run must record at least one value")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ResultsError(f"result rows lack required column(s) {missing}; every row needs {list(REQUIRED)}")
    unknown = sorted(set(df.columns) - set(SCHEMA))
    if unknown:
        raise ResultsError(f"unknown result column(s) {unknown}; the schema is {list(SCHEMA)} (suite/results.py)")
    fill = {"run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if provenance is not None:
        fill.update(git_sha=provenance.git_sha, git_dirty=provenance.git_dirty,
                    versions=provenance.versions, device=provenance.device)
    if config is not None:
        fill["config_hash"] = config_hash(config)
    for col in SCHEMA:
        if col not in df.columns:
            df[col] = fill.get(col)
        elif fill.get(col) is not None:
            df[col] = df[col].where(df[col].notna(), fill[col])
    df = df[list(SCHEMA)].astype(SCHEMA)
    _validate(df, "result rows")
    return df


def _validate(df: pd.DataFrame, where: str) -> None:
    bad_bound = sorted(set(df["bound"].dropna()) - set(BOUNDS))
    if bad_bound:
        raise ResultsError(f"{where}: bound must be one of {BOUNDS}, got {bad_bound}")
    if df["value"].isna().any():
        raise ResultsError(f"{where}: a value is missing (NaN); a run that failed must not record a number")
    if not np.isfinite(df["value"].to_numpy(dtype=float)).all():
        raise ResultsError(f"{where}: a value is infinite; a diverged estimate must not be recorded")
    for col in REQUIRED:
        if df[col].isna().any():
            raise ResultsError(f"{where}: column {col!r} has empty entries")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_run(df: pd.DataFrame, results_dir: str | Path, name: str | None = None) -> Path:
    """Write one run's table as `<results_dir>/<name>.parquet` plus a `.csv` mirror, atomically.

    `name` defaults to the run_id. Refuses to overwrite an existing run file.
    """
    df = make_table(df)
    if name is None and df["run_id"].notna().any():
        name = str(df["run_id"].dropna().iloc[0])
    if not name:
        raise ResultsError("a run needs a name or a run_id to be written")
    path = Path(results_dir) / f"{name}.parquet"
    if path.exists():
        raise ResultsError(f"{path} already exists; runs are written once: choose a new run id")
    _atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    _atomic_write(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False, float_format="%.10g"))
    return path


def load_results(results_dir: str | Path, recursive: bool = True, stems: set[str] | None = None) -> pd.DataFrame:
    """Every run file under `results_dir` as one DataFrame.

    A file that cannot be read or does not match the schema is logged and skipped; the skipped paths
    and reasons are in `df.attrs["skipped"]`. `stems`: read only the files whose name up to the first '.'
    (`<comparison>__<method>`) is in the set; the others are listed in `df.attrs["ignored"]`.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results folder {root} does not exist; run `bfnbench eval` or pass the right folder")
    files = sorted(root.rglob("*.parquet") if recursive else root.glob("*.parquet"))
    frames, skipped, ignored = [], [], []
    for f in files:
        if f.name.startswith("."):  # a temporary file of a write in progress
            continue
        if stems is not None and f.name.split(".", 1)[0] not in stems:
            ignored.append(str(f))
            continue
        try:
            df = pd.read_parquet(f)
            missing = [c for c in SCHEMA if c not in df.columns]
            if missing:
                raise ResultsError(f"missing column(s) {missing}")
            df = df[list(SCHEMA)].astype(SCHEMA)
            _validate(df, str(f))
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            reason = f"{type(e).__name__}: {e}"
            log.warning("skipping results file %s (%s); delete it or re-run the run that wrote it", f, reason)
            skipped.append((str(f), reason))
            continue
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: pd.Series(dtype=t) for c, t in SCHEMA.items()})
    out.attrs["skipped"] = skipped
    out.attrs["ignored"] = ignored
    return out


# ---------------------------------------------------------------- published numbers

REFERENCE_SCHEMA = {
    "paper": "string", "table": "string", "dataset": "string", "model": "string", "variant": "string",
    "n_steps": "float64", "value": "float64", "stderr": "float64", "unit": "string", "bound": "string",
    "status": "string", "note": "string",
}


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers (`results/reference/paper_numbers.csv`), typed; n_steps 'inf' = continuous time.

    `value_text` and `stderr_text` keep the numbers exactly as published, for display."""
    path = Path(path) if path is not None else REFERENCE_DIR / "paper_numbers.csv"
    if not path.is_file():
        raise ResultsError(f"reference numbers {path} not found; copy ../shared/reference/paper_numbers.csv there")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REFERENCE_SCHEMA if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}")
    text = df[["value", "stderr"]].rename(columns=lambda c: f"{c}_text")  # as published, for display
    for col in ("n_steps", "value", "stderr"):
        df[col] = df[col].map(lambda s: math.inf if s == "inf" else (float(s) if s else math.nan))
    df = pd.concat([df[list(REFERENCE_SCHEMA)].astype(REFERENCE_SCHEMA), text.astype("string")], axis=1)
    if df["value"].isna().any():
        raise ResultsError(f"{path}: a published number is missing a value")
    return df
