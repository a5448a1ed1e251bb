"""Likelihood regression for CI: tiny committed checkpoints with reference NLLs.

Each case is a tiny model (kilobytes) of one method on one data type. Two checks:

  check_checkpoints   evaluate each committed checkpoint with fixed seeds; fail when a bound moves by
                      more than 3 combined standard errors (or `abs_tol` nats, whichever is larger)
  check_training      train each tiny model from its seed for its fixed number of updates, evaluate,
                      and compare with the reference of that retraining, with the same tolerance

`refresh` retrains every case, re-evaluates, prints old and new side by side, and rewrites the
checkpoints and `results/reference/ci_likelihoods.csv`. It is the only way the references change.

Why 3 standard errors: with fixed seeds the evaluation is deterministic on one machine, so any move
comes from a change in code, library or hardware. Float differences across CPUs and BLAS builds are far
below the Monte-Carlo error, while a wrong term in a bound moves it by many standard errors.
`abs_tol` (1e-3 nats per example) only guards cases whose standard error is tiny.

Everything here runs on one intra-op thread: a training run is chaotic, and two threads sum in another
order, which after 150 updates moves a tiny transformer's bound by several standard errors. With the
thread count pinned, a retrain is bit-for-bit repeatable on one machine; on a CPU with other vector
kernels `regress train` may still move, and prints old beside new to show by how much.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from suite import checkpoint
from suite.config import RunConfig
from suite.evaluate import nll_passes
from suite.results import REFERENCE_DIR
from suite.train import build, train

CKPT_DIR = REFERENCE_DIR / "ci_checkpoints"
REF_CSV = REFERENCE_DIR / "ci_likelihoods.csv"
ABS_TOL = 1e-3  # nats per example
N_SIGMA = 3.0


@dataclass
class Case:
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
    repeats: int = 32  # systematic t: `groups` independent groups of repeats/groups evenly spaced passes
    groups: int = 4
    examples: int = 200

    def config(self, out_dir) -> RunConfig:
        return RunConfig(name=self.name, method=self.method, dataset=self.dataset, backbone=self.backbone,
                         backbone_kwargs=dict(self.backbone_kwargs), method_kwargs=dict(self.method_kwargs),
                         data_kwargs=dict(self.data_kwargs), batch_size=self.batch_size, max_steps=self.steps,
                         lr=2e-3, ema_decay=0.9, val_every=self.steps, ckpt_every=self.steps, log_every=self.steps,
                         val_examples=64, out_dir=str(out_dir), seed=0, device="cpu", amp="none").validate()


_MLP = {"width": 32, "depth": 2}
_CONV = {"channels": 8, "n_blocks": 1, "norm_groups": 4}
_TEXT = {"d_model": 32, "n_layers": 1, "n_heads": 2}
CASES = [
    Case("bfn_continuous_swiss_roll", "bfn_continuous", "swiss_roll", "mlp", _MLP, {"sigma1": 0.02, "x_range": [-3.0, 3.0]}),
    Case("bfn_discrete_heartbeat", "bfn_discrete", "binary_heartbeat", "mlp", _MLP, {"beta1": 3.0}),
    Case("bfn_discretised_mnist16", "bfn_discretised", "mnist_embedded_16", "conv", _CONV, {"sigma1": 0.0316227766}),
    Case("bfn_discrete_text", "bfn_discrete", "text_embedded", "transformer", _TEXT, {"beta1": 0.5625},
         {"seq_len": 32}),
    Case("sohl_gaussian_swiss_roll", "sohl_gaussian", "swiss_roll", "mlp", _MLP, {"T": 40}, n_steps=(10, None)),
    Case("sohl_binomial_heartbeat", "sohl_binomial", "binary_heartbeat", "mlp", _MLP, {"T": 100}, n_steps=(10, None)),
    Case("ddpm_mnist16", "ddpm", "mnist_embedded_16", "conv", _CONV, {"T": 100}, n_steps=(10, None)),
    Case("vdm_mnist16", "vdm", "mnist_embedded_16", "conv", _CONV),
    Case("multinomial_text", "multinomial_diffusion", "text_embedded", "transformer", _TEXT, {"T": 100},
         {"seq_len": 32}),
    Case("masked_text", "masked_diffusion", "text_embedded", "transformer", _TEXT, {}, {"seq_len": 32}),
]


@contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _case(name: str) -> Case:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"unknown CI case {name!r}; cases: {[c.name for c in CASES]}")


def evaluate_case(case: Case, run_dir: Path, use_ema: bool = True) -> list[dict]:
    """Deterministic evaluation of a case's checkpoint: rows of (case, n_steps, value, stderr) in nats."""
    torch.manual_seed(0)
    method, data = build(case.config(run_dir.parent))
    checkpoint.load_weights(run_dir, method, use_ema=use_ema)
    rows = []
    for n in case.n_steps:
        means, _, count = nll_passes(method, data, split="test", n_steps=n, n_repeats=case.repeats,
                                     batch_size=100, max_examples=case.examples, seed=0, estimator="systematic",
                                     groups=case.groups)
        g = means.reshape(case.groups, -1).mean(1)  # independent group means (suite/evaluate.py)
        m = float(g.mean())
        se = float(g.std(ddof=1) / math.sqrt(len(g)))
        rows.append({"case": case.name, "method": case.method, "dataset": case.dataset,
                     "n_steps": "inf" if n is None else str(n), "value": m, "stderr": se,
                     "n_repeats": case.repeats, "n_examples": count})
    return rows


def load_reference(path: Path = REF_CSV) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `bfnbench regress refresh` to create the CI references")
    return pd.read_csv(path, dtype={"n_steps": str, "case": str, "kind": str})


def compare(ref: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old and new side by side, with the allowed move and whether it is exceeded."""
    m = ref.merge(new, on=["case", "kind", "n_steps"], suffixes=("_ref", "_new"), how="outer", indicator=True)
    m["delta"] = m["value_new"] - m["value_ref"]
    m["allowed"] = (N_SIGMA * (m["stderr_ref"] ** 2 + m["stderr_new"] ** 2) ** 0.5).clip(lower=ABS_TOL)
    m["moved"] = (m["delta"].abs() > m["allowed"]) | (m["_merge"] != "both")
    return m[["case", "kind", "n_steps", "value_ref", "stderr_ref", "value_new", "stderr_new", "delta", "allowed",
              "moved"]]


def run_checkpoints(cases=None) -> pd.DataFrame:
    rows = []
    with one_thread():
        for c in cases or CASES:
            rows += [{**r, "kind": "checkpoint"} for r in evaluate_case(c, CKPT_DIR / c.name)]
    return pd.DataFrame(rows)


def run_training(cases=None, out_dir: Path | None = None) -> pd.DataFrame:
    rows = []
    tmp = Path(out_dir or tempfile.mkdtemp(prefix="bfnbench-ci-"))
    with one_thread():
        for c in cases or CASES:
            run = train(c.config(tmp), progress=False)
            rows += [{**r, "kind": "retrain"} for r in evaluate_case(c, run)]
    return pd.DataFrame(rows)


def refresh(cases=None) -> pd.DataFrame:
    """Retrain every case, replace its committed checkpoint and reference rows; return old vs new."""
    cases = cases or CASES
    CKPT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bfnbench-ci-"))
    new = run_training(cases, tmp)  # the retrain reference and the checkpoint are the same run
    for c in cases:
        dest = CKPT_DIR / c.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(checkpoint.latest(tmp / c.name), dest)
        state = torch.load(dest / "state.pt", weights_only=False)
        state["optimizer"] = None  # the optimizer state is not needed to evaluate, and doubles the size
        torch.save(state, dest / "state.pt")
    new = pd.concat([new, new.assign(kind="checkpoint")], ignore_index=True)
    try:
        old = load_reference()
        old = old[~old["case"].isin([c.name for c in cases])]
    except FileNotFoundError:
        old = new.iloc[:0]
    table = pd.concat([old, new], ignore_index=True).sort_values(["case", "kind", "n_steps"])
    prev = load_reference() if REF_CSV.is_file() else new.iloc[:0]
    tmpf = REF_CSV.with_suffix(".tmp")
    table.to_csv(tmpf, index=False, float_format="%.10g")
    tmpf.replace(REF_CSV)
    shutil.rmtree(tmp, ignore_errors=True)
    return compare(prev, new) if len(prev) else new
