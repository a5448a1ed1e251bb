"""`bfnbench bench`: every comparison of a scale, end to end.

For each comparison and each of its methods: train (or resume a killed run, or reuse a finished one),
evaluate the NLL bound over the step sweep, draw samples; then write the tables and plots.

    results/<scale>/runs/<comparison>__<method>.parquet (+ .csv)   tidy rows, one file per method
    results/<scale>/tables/*.md, *.tex                            paper tables, ours beside published
    results/<scale>/plots/*.png, *.pdf                            NLL vs steps, training curves, samples
    results/checkpoints/<scale>/...                               checkpoints (not committed)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from suite import checkpoint, results
from suite.evaluate import evaluate, null_model_rows
from suite.experiments import Comparison, check_fair, load_comparisons
from suite.runtime import build, load_run, resolve_device
from suite.train import train


def _count(method) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


def _finished(run_dir: Path, max_steps: int) -> bool:
    try:
        return checkpoint.latest(run_dir) is not None and checkpoint.load_state(run_dir)["step"] >= max_steps
    except checkpoint.CheckpointError:
        return False


def _replace_run(table, runs_dir: Path, stem: str) -> Path:
    """Write the new file, then remove the older files of the same comparison/method."""
    old = [p for p in runs_dir.glob(f"{stem}.*.parquet")]
    path = results.write_run(table, runs_dir, name=f"{stem}.{table['run_id'].iloc[0]}")
    for p in old:
        p.unlink(missing_ok=True)
        p.with_suffix(".csv").unlink(missing_ok=True)
    return path


def run_method(comp: Comparison, method_name: str, out: Path, overrides: list[str], progress: bool = True,
               built: tuple | None = None):
    """Train (or resume, or reuse) one method of a comparison, evaluate its EMA weights, write its run file.

    `built`: the (method, data) run_bench already built from this config (for the fairness check); the trained
    weights are loaded into it instead of building the model again."""
    cfg = comp.run_config(method_name, out / "checkpoints" / comp.scale / comp.name, overrides)
    run_dir = Path(cfg.out_dir) / cfg.name
    t0 = time.perf_counter()
    if not _finished(run_dir, cfg.max_steps):
        resume = run_dir.exists() and checkpoint.latest(run_dir) is not None
        train(cfg, resume=resume, progress=progress)
    train_s = time.perf_counter() - t0
    device = resolve_device(cfg.device)
    _, method, data = load_run(run_dir, config=cfg, device=device, built=built)
    t1 = time.perf_counter()
    rows = evaluate(method, data, n_steps_list=cfg.eval_n_steps, split=cfg.eval_split, n_repeats=cfg.eval_repeats,
                    batch_size=cfg.eval_batch_size, max_examples=cfg.eval_examples, seed=cfg.seed, device=device,
                    progress=progress)
    eval_s = time.perf_counter() - t1
    info = {"comparison": comp.name, "backbone": cfg.backbone, "backbone_kwargs": cfg.backbone_kwargs,
            "optimizer": f"AdamW(lr={cfg.lr}, betas={tuple(cfg.betas)}, wd={cfg.weight_decay})",
            "batch_size": cfg.batch_size, "updates": cfg.max_steps, "ema_decay": cfg.ema_decay,
            "grad_clip": cfg.grad_clip, "train_n_steps": cfg.train_n_steps, "data_order_seed": cfg.seed,
            "method_kwargs": cfg.method_kwargs, "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "paper_dataset": comp.paper_dataset, "stand_in_for": data.spec.stand_in_for}
    n_params = _count(method)
    rows = [results.make_row(**r, n_params=n_params, train_info=json.dumps(info, default=str, sort_keys=True))
            for r in rows]
    hist = checkpoint.load_state(run_dir)["history"]
    rows += [results.make_row(method=method_name, dataset=data.spec.name, split="val", metric=k, n_steps=math.nan,
                              value=h[k], unit="nats", bound="<=", n_dims=data.spec.ndim, seed=cfg.seed,
                              protocol=f"training curve at step {h['step']}", n_repeats=1, n_params=n_params,
                              train_info=json.dumps({"step": h["step"], "comparison": comp.name}))
             for h in hist for k in ("val_loss_ema",) if k in h]
    table = results.make_table(rows, run_id=results.new_run_id(comp.name), config=cfg.to_dict(),
                               provenance=results.Provenance.collect(device))
    path = _replace_run(table, out / comp.scale / "runs", f"{comp.name}__{method_name}")
    return path, method, data, cfg


def run_bench(scale: str = "embedded", out: str | Path = "results", only: list[str] | None = None,
              overrides: list[str] | None = None, progress: bool = True, samples: bool = True) -> Path:
    from suite import plots, tables

    out = Path(out)
    overrides = list(overrides or [])
    comps = load_comparisons(scale, only)
    jobs = [(c, m) for c in comps for m in c.methods]
    # every model is built once: here, for the fairness check (an unfair comparison is refused before any time
    # is spent on it); run_method then loads the trained weights into the same instance, and the variance study
    # evaluates it again. (train() builds its own, seeded copy to train.)
    built = {(c.name, m): build(c.run_config(m, out, overrides)) for c in comps for m in c.methods}
    for comp in comps:
        counts = {m: _count(built[comp.name, m][0]) for m in comp.methods}
        if len(counts) > 1:
            check_fair(counts)
    bar = tqdm(jobs, desc=f"bench[{scale}]", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for comp, m in bar:
        bar.set_postfix_str(f"{comp.name}: {m}")
        path, method, data, cfg = run_method(comp, m, out, overrides, progress=progress, built=built[comp.name, m])
        if samples:
            plots.sample_grid(method, data.spec, out / scale / "plots" / "samples" / f"{comp.name}__{m}.png",
                              n_steps_list=[n for n in (10, 100) if n], seed=cfg.seed)
    for comp in comps:  # the null model of each data set, for K - L_null and as a floor to beat
        first = next(iter(comp.methods))
        cfg = comp.run_config(first, out, overrides)
        data = built[comp.name, first][1]
        table = results.make_table(null_model_rows(data, split=cfg.eval_split, max_examples=cfg.eval_examples,
                                                   seed=cfg.seed),
                                   run_id=results.new_run_id(f"{comp.name}-null"), provenance=results.Provenance.collect())
        _replace_run(table, out / scale / "runs", f"{comp.name}__null")
    df = results.load_results(out / scale / "runs")
    written = tables.write_all(df, out / scale / "tables")
    written += plots.write_all(df, out / scale / "plots")
    written.append(variance_study(scale, out, only, overrides=overrides, built=built))
    elapsed = time.perf_counter() - t0
    print(f"\nbench[{scale}] finished in {elapsed / 60:.1f} min ({torch.get_num_threads()} threads, "
          f"device {results.device_name(resolve_device('auto'))})")
    print(f"  tables: {out / scale / 'tables'}")
    print(f"  plots:  {out / scale / 'plots'}")
    return out / scale


def variance_study(scale: str = "embedded", out: str | Path = "results", only: list[str] | None = None,
                   passes: int = 16, groups: int = 4, examples: int = 200, overrides: list[str] | None = None,
                   built: dict | None = None) -> Path:
    """Plain against systematic t for the same number of network evaluations, side by side.

    For every trained method of the scale, at continuous time (or a discrete-time model's full grid) and at
    10 steps: `passes` passes over `examples` test examples, once with plain i.i.d. t (s.e. over passes) and
    once with systematic t (`groups` independent groups, s.e. over group means). Writes variance.md/.csv
    (suite/tables.py write_variance). `built`: run_bench's models by (comparison, method), reused.
    """
    import pandas as pd

    from suite import tables

    out = Path(out)
    built = built or {}
    rows = []
    for comp in load_comparisons(scale, only):
        for m in comp.methods:
            cfg = comp.run_config(m, out / "checkpoints" / comp.scale / comp.name, overrides)
            run_dir = Path(cfg.out_dir) / cfg.name
            if not _finished(run_dir, cfg.max_steps):
                continue
            device = resolve_device(cfg.device)
            _, method, data = load_run(run_dir, config=cfg, device=device, built=built.get((comp.name, m)))
            for n in (10, None):
                row = {"comparison": comp.name, "method": m, "dataset": data.spec.name}
                for est in ("plain", "systematic"):
                    r = evaluate(method, data, n_steps_list=[n], split=cfg.eval_split, n_repeats=passes,
                                 batch_size=cfg.eval_batch_size, max_examples=examples, seed=cfg.seed, device=device,
                                 estimator=est, groups=groups if est == "systematic" else 1)[0]
                    row.update({"n_steps": r["n_steps"], "unit": r["unit"], f"{est}": r["value"], f"{est}_se": r["stderr"]})
                row["se_ratio"] = row["plain_se"] / row["systematic_se"] if row["systematic_se"] > 0 else math.nan
                rows.append(row)
    return tables.write_variance(pd.DataFrame(rows), out / scale / "tables", passes, groups, examples)
