"""Likelihood regression for CI: reference NLL bounds with tolerances that come from measurement.

A reference file (CSV) holds one row per (case, guarantee, n_steps). A case is a checkpoint folder (a run
folder written by `bfnbench train`, or one of its ckpt-* folders) plus its evaluation settings. Two
guarantees, each with its own tolerance ("band"), both measured by `record` and written beside the value:

  checkpoint  Evaluating the case's checkpoint with fixed seeds (one intra-op thread) reproduces the
              reference. The evaluation is deterministic up to float32 rounding, so the band is set by the
              measured spread of the same evaluation across VARIANTS: thread counts 1, 2, 4; the compiled
              and the torch k-hat kernels (BFNBENCH_NUMBA); and torch / MKL / oneDNN / numba restricted to
              AVX2 and to baseline x86-64 code (how another CPU vendor's kernels round). The band is
              CKPT_FACTOR x the largest deviation measured, and at least CKPT_REL_FLOOR x |value|.
  retrain     Training the case again from its config and seed, then evaluating, lands within the spread of
              training itself. `record` retrains with SEEDS seeds (data order, initialisation and noise all
              change) and, at the reference seed, with the same variants as above; the band is the
              prediction interval of one more retraining, t(N-1; 1 - ALPHA/2) x sqrt(1 + 1/N) x sd, around
              the mean of the N seeds, with sd the larger of the seed-to-seed and the variant-to-variant
              standard deviations. Under a normal approximation a row raises a false alarm with probability
              ALPHA; a CI run over R rows at most R x ALPHA.

Every row records its provenance (CPU model, torch and numba versions, thread count, ISA, date, git sha).
`bfnbench regress record RUN_DIR ... --reference FILE` writes a reference file for a user's own runs;
`bfnbench regress check|train --reference FILE` gates them. The committed tiny models (CASES, kilobytes
each, in results/reference/ci_checkpoints/) and results/reference/ci_likelihoods.csv are this project's
own gate; `bfnbench regress refresh` retrains them and is the only way their references change.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from suite import checkpoint, units
from suite.config import RunConfig, apply
from suite.evaluate import nll_passes
from suite.results import REFERENCE_DIR
from suite.runtime import load_run
from suite.train import train

CKPT_DIR = REFERENCE_DIR / "ci_checkpoints"
REF_CSV = REFERENCE_DIR / "ci_likelihoods.csv"

CKPT_FACTOR = 10.0  # checkpoint band: this many times the largest deviation measured across VARIANTS ...
CKPT_REL_FLOOR = 1e-5  # ... and at least this fraction of the value (~100 float32 ulps; a zero spread is no band)
SEEDS = 10  # retrain band: retrainings with seeds seed, seed+1, ... measured by `record`
ALPHA = 5e-4  # retrain band: per-row false-alarm probability under a normal approximation

KEYS = ["case", "kind", "n_steps"]


# -- cases ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A checkpoint and how it is evaluated. `source` is relative to the reference file's folder."""

    name: str
    source: str
    n_steps: tuple = (10, None)
    repeats: int = 32  # systematic t: `groups` independent groups of repeats/groups evenly spaced passes
    groups: int = 4
    examples: int = 200

    def folder(self, base: Path) -> Path:
        return (Path(base) / self.source).resolve()


@dataclass
class TinyModel:
    """One of the committed CI models: a method on a data type, trained for a few hundred updates."""

    name: str
    method: str
    dataset: str
    backbone: str
    backbone_kwargs: dict
    method_kwargs: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    n_steps: tuple = (10, None)
    steps: int = 150
    batch_size: int = 32

    def config(self, out_dir) -> RunConfig:
        return RunConfig(name=self.name, method=self.method, dataset=self.dataset, backbone=self.backbone,
                         backbone_kwargs=dict(self.backbone_kwargs), method_kwargs=dict(self.method_kwargs),
                         data_kwargs=dict(self.data_kwargs), batch_size=self.batch_size, max_steps=self.steps,
                         lr=2e-3, ema_decay=0.9, val_every=self.steps, ckpt_every=self.steps, log_every=self.steps,
                         val_examples=64, out_dir=str(out_dir), seed=0, device="cpu", amp="none").validate()

    def case(self) -> Case:
        return Case(self.name, f"ci_checkpoints/{self.name}", self.n_steps)


_MLP = {"width": 32, "depth": 2}
_CONV = {"channels": 8, "n_blocks": 1, "norm_groups": 4}
_TEXT = {"d_model": 32, "n_layers": 1, "n_heads": 2}
CASES = [
    TinyModel("bfn_continuous_swiss_roll", "bfn_continuous", "swiss_roll", "mlp", _MLP,
              {"sigma1": 0.02, "x_range": [-3.0, 3.0]}),
    TinyModel("bfn_discrete_heartbeat", "bfn_discrete", "binary_heartbeat", "mlp", _MLP, {"beta1": 3.0}),
    TinyModel("bfn_discretised_mnist16", "bfn_discretised", "mnist_embedded_16", "conv", _CONV,
              {"sigma1": 0.0316227766}),
    TinyModel("bfn_discrete_text", "bfn_discrete", "text_embedded", "transformer", _TEXT, {"beta1": 0.5625},
              {"seq_len": 32}),
    TinyModel("sohl_gaussian_swiss_roll", "sohl_gaussian", "swiss_roll", "mlp", _MLP, {"T": 40}),
    TinyModel("sohl_binomial_heartbeat", "sohl_binomial", "binary_heartbeat", "mlp", _MLP, {"T": 100}),
    TinyModel("ddpm_mnist16", "ddpm", "mnist_embedded_16", "conv", _CONV, {"T": 100}),
    TinyModel("vdm_mnist16", "vdm", "mnist_embedded_16", "conv", _CONV),
    TinyModel("multinomial_text", "multinomial_diffusion", "text_embedded", "transformer", _TEXT, {"T": 100},
              {"seq_len": 32}),
    TinyModel("masked_text", "masked_diffusion", "text_embedded", "transformer", _TEXT, {}, {"seq_len": 32}),
]


def tiny_model(name: str) -> TinyModel:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"unknown CI case {name!r}; cases: {', '.join(c.name for c in CASES)}")


def run_config(folder: Path) -> RunConfig:
    """The config a checkpoint was trained with (its state.pt holds it)."""
    return apply(RunConfig(), checkpoint.load_state(folder)["config"]).validate()


# -- the measurement variants -----------------------------------------------------------------------------

# Environment that makes torch (ATen), MKL, oneDNN and numba use only the given instruction set on x86-64,
# the way they would on a CPU that lacks the newer ones (e.g. AVX2-only AMD EPYC, or an old Xeon).
_ISA_ENV = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "NUMBA_CPU_NAME": "haswell"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "NUMBA_CPU_NAME": "x86-64"},
}


@dataclass(frozen=True)
class Variant:
    threads: int = 1
    kernels: str = "compiled"  # the k-hat kernel: "compiled" (numba) or "torch" (BFNBENCH_NUMBA=0)
    isa: str = "native"

    @property
    def label(self) -> str:
        return f"threads={self.threads} kernels={self.kernels} isa={self.isa}"

    def env(self) -> dict[str, str]:
        return {"BFNBENCH_NUMBA": "1" if self.kernels == "compiled" else "0", **_ISA_ENV[self.isa]}


BASE = Variant()


def variants(thread_counts=None, kernels=None, isas=None) -> list[Variant]:
    """Thread counts 1, 2, 4 x both k-hat kernels x the instruction sets this CPU can stand in for; the base
    variant (1 thread, compiled, native) always first."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    isas = list(isas or (["native", "avx2", "baseline"] if x86 else ["native"]))
    if not x86 and isas != ["native"]:
        raise ValueError(f"ISA variants {isas} stand in for other x86-64 CPUs; this is {platform.machine()}: "
                         "use native only")
    out = [Variant(t, k, i) for i in isas for k in (kernels or ("compiled", "torch")) for t in (thread_counts or (1, 2, 4))]
    return [BASE] + [v for v in out if v != BASE]


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- evaluation and retraining ----------------------------------------------------------------------------


def evaluate(case: Case, folder: Path, use_ema: bool = True) -> list[dict]:
    """Deterministic evaluation of the checkpoint in `folder`: rows of (case, n_steps, value, stderr) in nats
    per example, at the current thread count."""
    torch.manual_seed(0)
    cfg, method, data = load_run(folder, use_ema=use_ema)
    rows = []
    for n in case.n_steps:
        means, _, count = nll_passes(method, data, split="test", n_steps=n, n_repeats=case.repeats,
                                     batch_size=100, max_examples=case.examples, seed=0, estimator="systematic",
                                     groups=case.groups)
        value, stderr = units.mean_and_stderr(means.reshape(case.groups, -1).mean(1))  # independent group means
        rows.append({"case": case.name, "method": cfg.method, "dataset": cfg.dataset,
                     "n_steps": "inf" if n is None else str(n), "value": value, "stderr": stderr,
                     "n_repeats": case.repeats,
                     "groups": case.groups, "n_examples": count})
    return rows


def retrain(case: Case, folder: Path, out_dir: Path, seed_offset: int = 0) -> Path:
    """Train the checkpoint's config again (its seed + seed_offset) into out_dir; return the run folder."""
    cfg = run_config(folder)
    cfg.name, cfg.out_dir, cfg.seed, cfg.device = case.name, str(out_dir), cfg.seed + seed_offset, "cpu"
    return train(cfg.validate(), progress=False)


def measure(cases: list[Case], base: Path, kind: str, seed_offset: int = 0, n_threads: int = 1,
            out_dir: Path | None = None) -> pd.DataFrame:
    """Evaluate (kind="checkpoint") or retrain and evaluate (kind="retrain") every case, in this process."""
    rows = []
    tmp = Path(out_dir or tempfile.mkdtemp(prefix="bfnbench-regress-"))
    with threads(n_threads):
        for c in cases:
            folder = c.folder(base)
            if kind == "retrain":
                folder = retrain(c, folder, tmp / f"seed{seed_offset}", seed_offset)
            rows += [{**r, "kind": kind} for r in evaluate(c, folder)]
    if out_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return pd.DataFrame(rows)


def measure_in_subprocess(cases: list[Case], base: Path, kind: str, variant: Variant, seed_offset: int = 0) -> pd.DataFrame:
    """`measure` in a fresh interpreter with the variant's environment (ISA and kernel choices are read at
    import or per call, so they need their own process)."""
    with tempfile.TemporaryDirectory(prefix="bfnbench-regress-") as tmp:
        out = Path(tmp) / "rows.json"
        job = {"cases": [asdict(c) for c in cases], "base": str(base), "kind": kind, "seed_offset": seed_offset,
               "threads": variant.threads, "out": str(out)}
        env = {**os.environ, **variant.env(), "PYTHONHASHSEED": "0"}
        r = subprocess.run([sys.executable, "-m", "suite.regression", json.dumps(job)], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"regression worker ({variant.label}, {kind}) failed:\n{r.stderr[-3000:]}")
        return pd.DataFrame(json.loads(out.read_text()))


# -- references -------------------------------------------------------------------------------------------


def provenance(n_threads: int = 1) -> dict:
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = "absent"
    try:
        git = ["git", "-C", str(Path(__file__).parent)]
        sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        if sha and subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                                  timeout=10).stdout.strip():
            sha += "+dirty"
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {"cpu_model": cpu_model(), "torch_version": torch.__version__, "numba_version": numba_version,
            "threads": n_threads, "isa": torch.backends.cpu.get_cpu_capability(),
            "made_at": datetime.date.today().isoformat(), "git_sha": sha}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def checkpoint_band(value: float, spread: float) -> float:
    return max(CKPT_FACTOR * spread, CKPT_REL_FLOOR * abs(value))


def retrain_band(sd: float, n: int, alpha: float = ALPHA) -> float:
    """Half-width of the two-sided 1 - alpha prediction interval for one more draw, from n draws' sd."""
    from scipy.stats import t

    return float(t.ppf(1 - alpha / 2, n - 1)) * math.sqrt(1 + 1 / n) * sd


def record(cases: list[Case], base: Path, retrain_seeds: int = SEEDS, variant_list: list[Variant] | None = None,
           log=print) -> pd.DataFrame:
    """Measure both guarantees' references and bands for `cases` (retrain_seeds=0: the checkpoint one only)."""
    variant_list = variant_list or variants()
    if retrain_seeds and retrain_seeds < 3:
        raise ValueError(f"retrain_seeds={retrain_seeds}: a spread needs at least 3 retrainings (10 or more give a "
                         "usable band); pass 0 to record the checkpoint guarantee only")
    for c in cases:  # a folder that is no checkpoint fails here, in one line, not in a worker process
        run_config(c.folder(base))
    prov = provenance(BASE.threads)
    out = []

    log(f"checkpoint: {len(variant_list)} variants")
    runs = {}
    for v in variant_list:
        runs[v] = measure_in_subprocess(cases, base, "checkpoint", v).set_index(["case", "n_steps"])
        log(f"  {v.label}: done")
    ref = runs[BASE]
    dev = pd.concat([(r["value"] - ref["value"]).abs() for r in runs.values()], axis=1)
    rows = ref.reset_index()
    rows["spread"] = dev.max(axis=1).values
    rows["band"] = [checkpoint_band(v, s) for v, s in zip(rows["value"], rows["spread"], strict=True)]
    rows["band_rule"] = f"max({CKPT_FACTOR:g} x spread, {CKPT_REL_FLOOR:g} x |value|); spread = max |variant - base|"
    rows["n_variants"] = len(variant_list)
    out.append(rows)

    if retrain_seeds:
        log(f"retrain: {retrain_seeds} seeds at the base variant, then the other variants at the reference seed")
        seeds = [measure_in_subprocess(cases, base, "retrain", BASE, s).set_index(["case", "n_steps"])
                 for s in range(retrain_seeds)]
        others = [measure_in_subprocess(cases, base, "retrain", v).set_index(["case", "n_steps"])
                  for v in variant_list if v != BASE and v.isa != "baseline"]  # baseline-ISA training is slow
        sv = pd.concat([s["value"] for s in seeds], axis=1)
        vv = pd.concat([seeds[0]["value"]] + [o["value"] for o in others], axis=1)
        rows = seeds[0].reset_index()
        rows["value"] = sv.mean(axis=1).values
        rows["stderr"] = pd.concat([s["stderr"] for s in seeds], axis=1).mean(axis=1).values
        rows["spread"] = sv.std(axis=1, ddof=1).values
        rows["variant_spread"] = vv.std(axis=1, ddof=1).values if len(others) else 0.0
        sd = rows[["spread", "variant_spread"]].max(axis=1)
        rows["band"] = [retrain_band(s, retrain_seeds) for s in sd]
        rows["band_rule"] = (f"t({retrain_seeds - 1}; 1 - {ALPHA:g}/2) x sqrt(1 + 1/{retrain_seeds}) x max(sd over "
                             f"{retrain_seeds} seeds, sd over {1 + len(others)} variants at seed +0)")
        rows["n_variants"] = 1 + len(others)
        rows["kind"] = "retrain"
        out.append(rows)

    table = pd.concat(out, ignore_index=True)
    src = {c.name: c for c in cases}
    table["source"] = [src[n].source for n in table["case"]]
    for k, v in prov.items():
        table[k] = v
    return table


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"n_steps": str, "case": str, "kind": str, "source": str, "git_sha": str})


def load_reference(path: Path = REF_CSV) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write it with `bfnbench regress record RUN_DIR ... --reference "
                                f"{path}` (or, for this project's own gate, `bfnbench regress refresh`)")
    ref = _read(path)
    missing = {"case", "kind", "n_steps", "value", "band", "source", "n_repeats", "groups", "n_examples"} - set(ref)
    if missing:
        raise ValueError(f"{path}: not a regression reference (no column {', '.join(sorted(missing))}); rewrite it "
                         "with `bfnbench regress record` or `bfnbench regress refresh`")
    return ref


def cases_of(ref: pd.DataFrame) -> list[Case]:
    cases = []
    for name, g in ref.groupby("case", sort=False):
        first = g.iloc[0]
        steps = tuple(dict.fromkeys(None if s == "inf" else int(s) for s in g["n_steps"]))
        cases.append(Case(name, first["source"], steps, int(first["n_repeats"]), int(first["groups"]),
                          int(first["n_examples"])))
    return cases


def write_reference(table: pd.DataFrame, path: Path, replace_cases: bool = True) -> None:
    """Write (atomically) `table`'s rows into the reference file, replacing any earlier rows of its cases."""
    path = Path(path)
    if path.is_file() and replace_cases:
        old = _read(path)
        if {"band", "source"} <= set(old):  # a file of the format before bands were measured is replaced whole
            table = pd.concat([old[~old["case"].isin(table["case"])], table], ignore_index=True)
    table = table.sort_values(KEYS, kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False, float_format="%.10g")
    tmp.replace(path)


def compare(ref: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old and new side by side, with the band of the row's guarantee and whether the move exceeds it."""
    ref = ref[KEYS + ["value", "band"]].rename(columns={"value": "value_ref"})  # the reference's band holds
    new = new[KEYS + ["value", "stderr"]].rename(columns={"value": "value_new", "stderr": "stderr_new"})
    m = ref.merge(new, on=KEYS, how="outer", indicator=True)
    m["delta"] = m["value_new"] - m["value_ref"]
    m["moved"] = ~(m["delta"].abs() <= m["band"]) | (m["_merge"] != "both")
    m = m.rename(columns={"kind": "guarantee"})
    return m[["case", "guarantee", "n_steps", "value_ref", "value_new", "delta", "band", "stderr_new", "moved"]]


def check(path: Path = REF_CSV, kind: str = "checkpoint", names: list[str] | None = None) -> pd.DataFrame:
    """Evaluate (kind="checkpoint") or retrain (kind="retrain") every case of the reference file, compare."""
    ref = load_reference(path)
    ref = ref[(ref["kind"] == kind) & (ref["case"].isin(names) if names else True)]
    if ref.empty:
        raise ValueError(f"{path}: no {kind} rows{' for ' + ', '.join(names) if names else ''}; "
                         f"record them with `bfnbench regress record{' --retrain-seeds 10' if kind == 'retrain' else ''}`")
    new = measure(cases_of(ref), Path(path).parent, kind)
    return compare(ref, new)


def refresh(names: list[str] | None = None, seeds: int = SEEDS, log=print) -> pd.DataFrame:
    """Retrain the committed tiny models, replace their checkpoints, re-measure their references and bands;
    return old beside new."""
    models = [tiny_model(n) for n in names] if names else CASES
    CKPT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bfnbench-ci-") as tmp, threads(BASE.threads):
        for m in models:
            log(f"training {m.name}")
            run = train(m.config(tmp), progress=False)
            dest = CKPT_DIR / m.name
            staged = CKPT_DIR / f".{m.name}.new"
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(checkpoint.latest(run), staged)
            state = checkpoint.load_state(staged)
            state["optimizer"] = None  # not needed to evaluate or retrain, and doubles the size
            torch.save(state, staged / "state.pt")
            shutil.rmtree(dest, ignore_errors=True)
            staged.replace(dest)
    table = record([m.case() for m in models], REFERENCE_DIR, seeds, log=log)
    prev = _read(REF_CSV) if REF_CSV.is_file() else None
    write_reference(table, REF_CSV)
    if prev is None or "band" not in prev:  # the first references, or the format before bands: no comparison
        return table[["case", "kind", "n_steps", "value", "stderr", "spread", "band", "n_variants"]]
    return compare(prev, table)


def _worker(job: dict) -> None:
    cases = [Case(**{**c, "n_steps": tuple(c["n_steps"])}) for c in job["cases"]]
    df = measure(cases, Path(job["base"]), job["kind"], job["seed_offset"], job["threads"])
    Path(job["out"]).write_text(df.to_json(orient="records"))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
