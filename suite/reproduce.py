"""BFN paper Tables 1-5 from the official pretrained checkpoints (docs/official.md).

    bfnbench reproduce --checkpoints DIR --data-dir DIR [--tables 1 2 3 4 5] [--protocol reference|suite]
                       [--repeats R] [--budget SECONDS] [--max-examples N] [--out DIR]

Two estimators, named in every cell:

  reference  what the official test.py computes: L^n (or L^inf) + L^r over the whole test split, batch 100,
             n_repeats passes (its README: MNIST 2000, CIFAR-10 100, text8 1), each pass one t (or step) and
             one flow draw per example; value = mean of the pass means, s.e. = their std (ddof 0) / sqrt(R).
             Splits: the MNIST and CIFAR-10 test files; binarised MNIST re-binarised (Bernoulli(pixel/255))
             on every pass; text8 test = the last 5M characters, every window of 256 at stride 1, n - 256 of
             them (the official Text8Dataset's length). One pass over text8 is ~5M network calls x 2.
  suite      the suite's cheaper, lower-variance estimator (suite/evaluate.py, estimator="systematic"): the
             same test images (text8: windows at stride 256), R passes in 2 groups of evenly spaced t; s.e.
             over the 2 group means.

Official-code quirks (suite/bfn/continuous.py QUIRKS, docs/official.md): the reference protocol turns on, by
default, every quirk of the official code that the cell's method can reproduce (`quirks="official"`: the
Gaussian-flow BFNs' categorical_floor, recon_fallback, log_sigma_clamp, gamma_float32, bin_floor; the discrete
BFN's categorical_floor, flow_t_clamp, sender_samples); the suite protocol keeps the exact computation.
`quirks=` overrides either; each cell takes the named quirks its method has (`cell_quirks`). Every cell names
the quirks it used (column `quirks` of cells.csv and tables.md; "none" = the exact computation).

`--budget SECONDS` caps each cell: after one timed batch the repeats (and, if one pass cannot fit, the number
of test examples) are cut to fit, and the cell says so. A user trades time for precision knowingly: the s.e.
of every cell is printed beside it. On CUDA the network runs under bf16 autocast and the losses in float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from suite import timesteps, units
from suite.data.base import derive_seed

INF = math.inf
#: table -> [(paper dataset, variant, official config, step counts)]
TABLES = {
    1: [("binarized_mnist", "", "mnist_discrete", [INF]), ("cifar10_8bit", "continuous", "cifar10_continuous_256bins", [INF])],
    2: [("binarized_mnist", "", "mnist_discrete", [10, 25, 50, 100, 784, 1000, INF])],
    3: [(ds, var, cfg, [10, 25, 50, 100, 250, 500, 1000, INF]) for ds, var, cfg in (
        ("cifar10_8bit", "continuous", "cifar10_continuous_256bins"),
        ("cifar10_8bit", "discretised", "cifar10_discretized_256bins"),
        ("cifar10_4bit", "continuous", "cifar10_continuous_16bins"),
        ("cifar10_4bit", "discretised", "cifar10_discretized_16bins"))],
    4: [("text8", "", "text8_discrete", [INF])],
    5: [("text8", "", "text8_discrete", [10, 25, 50, 100, 256, 1000, INF])],
}  # fmt: skip
REFERENCE_REPEATS = {"mnist_discrete": 2000, "text8_discrete": 1}  # CIFAR-10: 100
SUITE_REPEATS = 8
BATCH = 100


def file_names(config: str) -> list[str]:
    """Names a checkpoint of `config` may have in --checkpoints: the released name, or the config's."""
    from suite.nets.official import RELEASED

    return [k for k, v in RELEASED.items() if v == config] + [f"{config}.pt", f"{config}.safetensors"]


def find_checkpoint(folder: Path, config: str) -> Path | None:
    return next((folder / n for n in file_names(config) if (folder / n).is_file()), None)


def network_config(path: Path, config: str) -> dict:
    """The full official config, or, for a down-scaled file, the `small` config of a layouts.json beside it."""
    import json

    from suite.nets.official import build_official_module, official_config, read_state_dict

    full = official_config(config)
    sd = read_state_dict(path)
    with torch.device("meta"):
        ref = build_official_module(full).state_dict()
    if {f"net.{k}": tuple(v.shape) for k, v in ref.items()} == {k: tuple(v.shape) for k, v in sd.items()}:
        return full
    for lay in (path.parent / "layouts.json", path.parent.parent / "layouts.json"):
        if lay.is_file():
            small = json.loads(lay.read_text()).get(config, {}).get("small", {}).get("config")
            if small:
                return {**full, **{k: small[k] for k in ("net", "input_adapter", "output_adapter")}}
    return full  # load_official will name what does not match


def default_quirks(protocol: str):
    """The official-code quirks a protocol uses by default: all that apply (reference), none (suite)."""
    return "official" if protocol == "reference" else ()


def cell_quirks(method: str, protocol: str, quirks=None):
    """The `quirks=` of a cell's method: the protocol's default (None), else those of the named quirks that
    `method` has ("official" and "none" as they are; an unknown name is kept, so the method names it in its
    error), so one list serves a run over Gaussian-flow and discrete cells alike."""
    from suite.bfn import ContinuousBFN, DiscreteBFN, DiscretisedBFN
    from suite.bfn.continuous import QUIRKS

    if quirks is None:
        return default_quirks(protocol)
    allowed = {"bfn_continuous": ContinuousBFN, "bfn_discretised": DiscretisedBFN,
               "bfn_discrete": DiscreteBFN}[method].allowed_quirks  # fmt: skip
    names = (quirks,) if isinstance(quirks, str) else tuple(quirks)
    return tuple(q for q in names if q in ("official", "none") or q in allowed or q not in QUIRKS)


def build(config: str, path: Path, data_dir: Path | None, protocol: str, device: str, data_options: dict | None = None,
          quirks=None):  # fmt: skip
    """(method, data set) for one official checkpoint: the suite's BFN method with the official network.
    quirks: the official-code quirks (None = the protocol's default, `default_quirks`; names a method lacks are
    left out for its cells, `cell_quirks`)."""
    from suite.data import get_dataset
    from suite.methods import build_method
    from suite.nets.official import OfficialNet, load_official, official_config

    suite_cfg = official_config(config)["suite"]
    opts = {"stride": 1 if protocol == "reference" else 256} if suite_cfg["dataset"] == "text8" else {}
    opts.update(data_options or {})
    data = get_dataset(suite_cfg["dataset"], data_dir=data_dir, **opts)
    spec = data.spec
    cfg = network_config(path, config)
    fin = spec.num_classes if spec.kind == "discrete" and spec.num_classes > 2 else 1
    fout = fin if spec.kind == "discrete" else cfg["output_adapter"]["parameters"]["output_height"]
    net = OfficialNet(spec.shape, fin, fout, config=cfg)
    net.config_name = config
    load_official(net, path)
    if torch.device(device).type == "cuda":
        net.autocast_dtype = torch.bfloat16
    hparams = dict(suite_cfg["hparams"])
    hparams["quirks"] = cell_quirks(suite_cfg["method"], protocol, quirks)
    method = build_method(suite_cfg["method"], spec, net=net, **hparams).to(device).eval()
    return method, data


@dataclass
class Plan:
    repeats: int
    examples: int
    note: str = ""


def plan(protocol: str, config: str, n_examples: int, sec_per_batch: float, repeats: int | None,
         budget: float | None, max_examples: int | None) -> Plan:
    R = repeats or (REFERENCE_REPEATS.get(config, 100) if protocol == "reference" else SUITE_REPEATS)
    if protocol == "suite":
        R = max(2, R + R % 2)  # two groups
    N = min(n_examples, max_examples or n_examples)
    note = "" if N == n_examples else f"first {N} of {n_examples} test examples (--max-examples)"
    if budget:
        per_pass = sec_per_batch * math.ceil(N / BATCH)
        fit = int(budget // max(per_pass, 1e-9))
        if fit < R:
            floor = 2 if protocol == "suite" else 1
            if fit >= floor:
                note = "; ".join(filter(None, [note, f"repeats cut from {R} to {fit - fit % floor} by --budget {budget:g}s"]))
                R = fit - fit % floor
            else:
                N2 = max(BATCH, int(budget / floor / sec_per_batch) * BATCH) if sec_per_batch > 0 else N
                note = "; ".join(filter(None, [note, f"repeats cut from {R} to {floor} and examples to the first "
                                                     f"{min(N, N2)} of {n_examples} by --budget {budget:g}s"]))
                R, N = floor, min(N, N2)
    return Plan(R, N, note)


@torch.no_grad()
def run_cell(method, data, n_steps, p: Plan, protocol: str, seed: int, device: str, bar=None) -> dict:
    """Pass means of L^n (or L^inf) + L^r in nats per example; value and s.e. as the protocol defines them."""
    n = None if n_steps == INF else int(n_steps)
    means = []
    per_group = p.repeats // 2 if protocol == "suite" else 1
    for r in range(p.repeats):
        torch.manual_seed(derive_seed(seed, r, n or 0))
        total, count, b = 0.0, 0, 0
        for x in data.batches("test", BATCH, seed=seed, epoch=r, shuffle=False, drop_last=False, device=device):
            x = x[: p.examples - count]
            if x.shape[0] == 0:
                break
            if protocol == "suite":
                g = torch.Generator().manual_seed(derive_seed(seed, r // per_group, b, n or 0, 77))
                with timesteps.systematic(torch.rand(x.shape[0], generator=g, dtype=torch.float64), r % per_group, per_group):
                    v = method.nll(x, n).double()
            else:
                v = method.nll(x, n).double()
            if not torch.isfinite(v).all():
                raise FloatingPointError(f"non-finite NLL bound at n_steps={n_steps}")
            total, count, b = total + float(v.sum()), count + x.shape[0], b + 1
            if bar is not None:
                bar.update(1)
        means.append(total / count)
    m = np.asarray(means)
    if protocol == "suite":
        g = m.reshape(2, -1).mean(1)
        value, se = float(g.mean()), float(g.std(ddof=1) / math.sqrt(2))
        how = f"suite: {p.repeats} passes, systematic t in 2 groups; s.e. over the 2 group means"
    else:
        value, se = float(m.mean()), float(m.std(ddof=0) / math.sqrt(m.size)) if m.size > 1 else math.nan
        how = f"reference (official test.py): {p.repeats} passes; s.e. = std(ddof 0) of pass means / sqrt(R)"
    return dict(value_nats=value, stderr_nats=se, n_repeats=p.repeats, n_examples=count, protocol=how)


def reproduce(checkpoints: Path, data_dir: Path | None, tables=(1, 2, 3, 4, 5), protocol: str = "reference",
              repeats: int | None = None, budget: float | None = None, max_examples: int | None = None,
              steps: list | None = None, seed: int = 1, device: str | None = None, progress: bool = True,
              log=print, data_options: dict | None = None, quirks=None):
    """Rows, one per (table, cell, n_steps): regenerated value and s.e. beside the published number.
    quirks: official-code quirks (None = the protocol's default: all that apply for reference, none for
    suite; names a cell's method lacks are left out there); each row's `quirks` names those used ("none": the
    exact computation)."""
    from tqdm.auto import tqdm

    from suite.results import load_reference

    if protocol not in ("reference", "suite"):
        raise ValueError(f"protocol must be 'reference' (the official test.py) or 'suite', got {protocol!r}")
    bad = sorted(set(tables) - set(TABLES))
    if bad:
        raise ValueError(f"no BFN table {bad}; tables are 1-5")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise FileNotFoundError(f"--checkpoints {checkpoints}: not a folder")
    paper = load_reference()
    paper = paper[paper.paper == "bfn2023"]
    # the distinct (config, n) cells, each computed once even where two tables show it
    cells: dict[tuple[str, float], list] = {}
    missing = {}
    for tab in tables:
        for ds, var, cfg, ns in TABLES[tab]:
            path = find_checkpoint(checkpoints, cfg)
            for n in ns:
                if steps is not None and n not in steps:
                    continue
                if path is None:
                    missing.setdefault(cfg, []).append((tab, ds, var, n))
                    continue
                cells.setdefault((cfg, n), []).append((tab, ds, var))
    for cfg, where in missing.items():
        log(f"reproduce: no checkpoint for {cfg} in {checkpoints} (looked for {', '.join(file_names(cfg))}): "
            f"{len(where)} cell(s) of table(s) {sorted({w[0] for w in where})} left empty")
    if not cells:
        raise ValueError(f"reproduce: no checkpoint in {checkpoints} for tables {list(tables)}; see docs/official.md")
    built, plans, timing = {}, {}, {}
    for cfg in sorted({c for c, _ in cells}):
        built[cfg] = build(cfg, find_checkpoint(checkpoints, cfg), data_dir, protocol, device, data_options, quirks)
    for (cfg, n) in cells:  # one timed batch per cell (after a warm-up on the first): an honest estimate
        method, data = built[cfg]
        x = next(iter(data.batches("test", BATCH, seed=seed, shuffle=False, drop_last=False, device=device)))
        if cfg not in timing:
            method.nll(x[:2], None if n == INF else int(n))
            timing[cfg] = True
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            method.nll(x, None if n == INF else int(n))
        _sync(device)
        sec = (time.perf_counter() - t0) * BATCH / x.shape[0]
        N = data.num_examples("test") - (1 if cfg.startswith("text8") and protocol == "reference" else 0)  # n - 256
        plans[(cfg, n)] = (plan(protocol, cfg, N, sec, repeats, budget, max_examples), sec)
    total = sum(p.repeats * math.ceil(p.examples / BATCH) for p, _ in plans.values())
    est = sum(p.repeats * math.ceil(p.examples / BATCH) * s for p, s in plans.values())
    log(f"reproduce: {len(cells)} cell(s), {total} batches of {BATCH} on {device}; estimated {_hms(est)} "
        f"from one timed batch per cell")
    rows = []
    bar = tqdm(total=total, disable=not progress, unit="batch", desc="reproduce")
    for (cfg, n), where in cells.items():
        method, data = built[cfg]
        p, sec = plans[(cfg, n)]
        bar.set_postfix_str(f"{cfg} n={'inf' if n == INF else int(n)}")
        t0 = time.perf_counter()
        res = run_cell(method, data, n, p, protocol, seed, device, bar)
        wall = time.perf_counter() - t0
        spec = data.spec
        for tab, ds, var in where:
            unit = units.default_unit(spec.kind, spec.name)
            pub = paper[(paper.table == str(tab)) & (paper.dataset == ds) & (paper.model == "BFN")
                        & (paper.variant.fillna("") == var) & (paper.n_steps == n)]  # fmt: skip
            rows.append(dict(
                table=tab, dataset=ds, variant=var, config=cfg, n_steps=n,
                value=float(units.nats_to(res["value_nats"], unit, spec.ndim)),
                stderr=float(units.nats_to(res["stderr_nats"], unit, spec.ndim)), unit=unit,
                paper=float(pub.value.iloc[0]) if len(pub) else math.nan,
                paper_status=str(pub.status.iloc[0]) if len(pub) else "",
                n_repeats=res["n_repeats"], n_examples=res["n_examples"], n_dims=spec.ndim, suite_dataset=spec.name,
                method=method.name,
                protocol="; ".join(filter(None, [res["protocol"], p.note])),
                quirks="+".join(getattr(method, "quirks", ())) or "none",
                checkpoint=str(find_checkpoint(checkpoints, cfg)), device=device, seconds=round(wall, 2),
                estimated_seconds=round(p.repeats * math.ceil(p.examples / BATCH) * sec, 2)))
    bar.close()
    return rows


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def tidy_rows(rows: list[dict]) -> list[dict]:
    """The cells as the suite's tidy result rows (suite/results.py make_row, the one constructor), the table,
    variant, configuration, checkpoint, quirks, published number and timing in train_info."""
    import json

    from suite import results

    extra = ("table", "variant", "config", "checkpoint", "quirks", "paper", "paper_status", "device", "seconds",
             "estimated_seconds", "dataset")
    return [results.make_row(method=r["method"], dataset=r["suite_dataset"], split="test", metric="nll",
                             n_steps=float(r["n_steps"]), value=r["value"], stderr=r["stderr"], unit=r["unit"],
                             bound="<=", n_repeats=r["n_repeats"], n_examples=r["n_examples"], n_dims=r["n_dims"],
                             protocol=r["protocol"],
                             train_info=json.dumps({("paper_dataset" if k == "dataset" else k): r[k] for k in extra
                                                    if k in r}, default=str, sort_keys=True))
            for r in rows]


def write(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """cells.csv (every field), runs/*.parquet (the tidy rows, results.load_results reads them) and tables.md
    (one table per paper table, regenerated beside published, through suite/tables.py markdown)."""
    import pandas as pd

    from suite import results
    from suite.tables import markdown

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    csv = out / "cells.csv"
    df.to_csv(csv, index=False)
    if rows and "method" in df:
        results.write_run(results.make_table(tidy_rows(rows), run_id=results.new_run_id("reproduce"),
                                             provenance=results.Provenance.collect(rows[0].get("device"))),
                          out / "runs")
    lines = ["# BFN paper tables from the official checkpoints", "",
             "Regenerated value +- s.e. beside the published number († = recalled, not yet checked against the "
             "paper). Every cell names its protocol, repeats and the official-code quirks it reproduced (none = "
             "the exact computation; docs/official.md).", ""]  # fmt: skip
    from suite.bfn.continuous import QUIRKS

    used = sorted({q for v in df.get("quirks", pd.Series(dtype=str)).fillna("none") for q in str(v).split("+")} - {"none"})
    if used:
        lines += ["Quirks used:", ""] + [f"- {q}: {QUIRKS.get(q, '?')}" for q in used] + [""]
    df = df.sort_values(["table", "dataset", "variant", "n_steps"], kind="stable")
    for tab, g in df.groupby("table", sort=True):
        shown = pd.DataFrame({
            "data": g["dataset"], "variant": g["variant"],
            "n steps": ["inf" if n == INF else str(int(n)) for n in g["n_steps"]],
            "regenerated": [f"{v:.4g}" for v in g["value"]], "s.e.": [f"{v:.2g}" for v in g["stderr"]],
            "paper": ["" if math.isnan(v) else f"{v:g}{' †' if st == 'recalled' else ''}"
                      for v, st in zip(g["paper"], g["paper_status"], strict=True)],
            "unit": g["unit"], "repeats": g["n_repeats"], "examples": g["n_examples"], "protocol": g["protocol"],
            "quirks": g.get("quirks", pd.Series("none", index=g.index))})
        lines += [f"## Table {tab}", "", markdown(shown), ""]
    md = out / "tables.md"
    md.write_text("\n".join(lines))
    return csv, md
