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

from suite import checkpoint, compare, results, units
from suite.compare import convergence
from suite.evaluate import evaluate, evaluate_resolved, exact_nll_of, null_model_rows, null_model_values, truth_rows
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


def _lr_name(lr: float) -> str:
    return f"lr{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def tuned_config(comp: Comparison, method_name: str, out: Path, overrides: list[str], progress: bool = True):
    """The RunConfig of a method's final run, after the comparison's learning-rate search (`tune:`).

    Every method of a comparison gets the same search: each learning rate of `tune.lr` trains for
    `tune.steps` updates, and the one with the lowest EMA validation *bound* at that step is chosen (ties to
    the first listed). The final run continues the chosen search run to `max_steps` (the learning rate is
    constant, so that is the same run as one trained from scratch), so the search costs
    (len(lr) - 1) x tune.steps extra updates per method. An `lr=...` override skips the search.
    Returns (config, {lr: validation bound in nats per example} or {})."""
    root = out / "checkpoints" / comp.scale / comp.name
    cfg = comp.run_config(method_name, root, overrides)
    tune = comp.tune or {}
    if not tune or any(o.split("=", 1)[0].strip() == "lr" for o in overrides):
        return cfg, {}
    search, steps = {}, min(tune["steps"], cfg.max_steps)
    for lr in tune["lr"]:
        c = comp.run_config(method_name, root, [*overrides, f"lr={lr}", f"max_steps={steps}",
                                                 f"name={cfg.name}__{_lr_name(lr)}"])
        run_dir = Path(c.out_dir) / c.name
        if not _finished(run_dir, c.max_steps):
            train(c, resume=run_dir.exists() and checkpoint.latest(run_dir) is not None, progress=progress)
        hist = checkpoint.load_state(run_dir)["history"]
        at = [h["val_bound_ema"] for h in hist if h.get("step") == c.max_steps and "val_bound_ema" in h]
        search[lr] = at[-1] if at else math.inf
    best = min(search, key=lambda lr: (search[lr], list(search).index(lr)))
    final = comp.run_config(method_name, root, [*overrides, f"lr={best}", f"name={cfg.name}__{_lr_name(best)}"])
    return final, search


def run_method(comp: Comparison, method_name: str, out: Path, overrides: list[str], progress: bool = True,
               built: tuple | None = None):
    """Train (after the comparison's learning-rate search; or resume a killed run, or reuse a finished one),
    evaluate its EMA weights with resolved standard errors, write its run file and per-example estimates.

    `built`: the (method, data) run_bench already built from this config (for the fairness check); the trained
    weights are loaded into it instead of building the model again."""
    t0 = time.perf_counter()
    cfg, search = tuned_config(comp, method_name, out, overrides, progress)
    run_dir = Path(cfg.out_dir) / cfg.name
    if not _finished(run_dir, cfg.max_steps):
        resume = run_dir.exists() and checkpoint.latest(run_dir) is not None
        train(cfg, resume=resume, progress=progress)
    train_s = time.perf_counter() - t0
    device = resolve_device(cfg.device)
    _, method, data = load_run(run_dir, config=cfg, device=device, built=built)
    unit = units.default_unit(data.spec.kind, data.spec.name)
    hist = checkpoint.load_state(run_dir)["history"]
    conv = convergence(hist, unit, data.spec.ndim)
    t1 = time.perf_counter()
    ev = dict(comp.resolve)
    rows, per_example = evaluate_resolved(
        method, data, n_steps_list=cfg.eval_n_steps, split=cfg.eval_split, batch_size=cfg.eval_batch_size,
        max_examples=cfg.eval_examples, seed=cfg.seed, device=device, unit=unit, progress=progress, **ev)
    eval_s = time.perf_counter() - t1
    info = {"comparison": comp.name, "backbone": cfg.backbone, "backbone_kwargs": cfg.backbone_kwargs,
            "optimizer": f"AdamW(lr={cfg.lr}, betas={tuple(cfg.betas)}, wd={cfg.weight_decay})",
            "batch_size": cfg.batch_size, "updates": cfg.max_steps, "ema_decay": cfg.ema_decay,
            "grad_clip": cfg.grad_clip, "train_n_steps": cfg.train_n_steps, "data_order_seed": cfg.seed,
            "method_kwargs": cfg.method_kwargs, "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "paper_dataset": comp.paper_dataset, "stand_in_for": data.spec.stand_in_for,
            "lr_search": {str(k): v for k, v in search.items()}, "lr_search_steps": (comp.tune or {}).get("steps"),
            "convergence": conv}
    n_params = _count(method)
    rows = [results.make_row(**r, n_params=n_params, train_info=json.dumps(info, default=str, sort_keys=True))
            for r in rows]
    rows += [results.make_row(method=method_name, dataset=data.spec.name, split="val", metric=k, n_steps=math.nan,
                              value=h[k], unit="nats", bound="<=",
                              n_dims=data.spec.ndim, seed=cfg.seed,
                              protocol=f"training curve at step {h['step']}", n_repeats=1, n_params=n_params,
                              train_info=json.dumps({"step": h["step"], "comparison": comp.name,
                                                     "still_falling": conv["still_falling"]}))
             for h in hist for k in ("val_loss_ema", "val_bound_ema") if k in h]
    table = results.make_table(rows, run_id=results.new_run_id(comp.name), config=cfg.to_dict(),
                               provenance=results.Provenance.collect(device))
    path = _replace_run(table, out / comp.scale / "runs", f"{comp.name}__{method_name}")
    passes = {f"n={'inf' if r['n_steps'] == math.inf else int(r['n_steps'])}": int(r["n_repeats"]) for r in rows
              if r["metric"] == "nll"}
    compare.write_examples(out / comp.scale / "examples" / f"{comp.name}__{method_name}.npz", per_example,
                           {"comparison": comp.name, "method": method_name, "dataset": data.spec.name, "unit": unit,
                            "n_dims": data.spec.ndim, "split": cfg.eval_split, "seed": cfg.seed, "passes": passes,
                            "convergence": conv, "lr": cfg.lr, "lr_search": {str(k): v for k, v in search.items()}})
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
    for comp in comps:  # the null model of each data set (K - L_null, a floor to beat) and the truth where known
        first = next(iter(comp.methods))
        cfg = comp.run_config(first, out, overrides)
        data = built[comp.name, first][1]
        kw = dict(split=cfg.eval_split, max_examples=cfg.eval_examples, seed=cfg.seed)
        table = results.make_table(null_model_rows(data, **kw) + truth_rows(data, **kw),
                                   run_id=results.new_run_id(f"{comp.name}-null"), provenance=results.Provenance.collect())
        _replace_run(table, out / scale / "runs", f"{comp.name}__null")
        null, desc = null_model_values(data, **kw)
        compare.write_reference(out / scale / "examples" / f"{comp.name}__reference.npz", comp.name, data.spec.name,
                                units.default_unit(data.spec.kind, data.spec.name), data.spec.ndim, null,
                                exact_nll_of(data, cfg.eval_split, cfg.eval_examples), desc)
    # the tables show the comparisons configured now: a run file of a comparison or method since removed from
    # the scale's configs (an older bench's) is left where it is, named, and kept out of every table
    configured = {f"{c.name}__{m}" for c in load_comparisons(scale) for m in [*c.methods, "null"]}
    df = results.load_results(out / scale / "runs", stems=configured)
    for f in df.attrs["ignored"]:
        print(f"bench[{scale}]: {f} is not a run of any {scale} comparison configured now; not in the tables "
              "(delete it, or restore its comparison's config)")
    written, cells = compare.write_all(out / scale / "examples", out / scale / "tables")
    written += tables.write_all(df, out / scale / "tables", cells=cells)
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
            if comp.tune and not _finished(Path(cfg.out_dir) / f"{cfg.name}__{_lr_name(comp.tune['lr'][0])}",
                                           min(comp.tune["steps"], cfg.max_steps)):
                continue  # the search has not run: nothing trained to study (same step count as tuned_config)
            cfg, _ = tuned_config(comp, m, out, overrides or [], progress=False)
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
    df = pd.DataFrame(rows)
    previous = out / scale / "tables" / "variance.csv"
    if only and previous.is_file() and previous.stat().st_size > 1:  # `--only`: keep the other comparisons' rows
        kept = pd.read_csv(previous)
        if "comparison" in kept.columns:
            kept = kept[~kept["comparison"].isin(set(only))]
            order = [c.name for c in load_comparisons(scale)]
            df = pd.concat([kept, df], ignore_index=True) if len(df) else kept
            df = df.sort_values("comparison", key=lambda s: s.map({n: i for i, n in enumerate(order)}),
                                kind="stable", ignore_index=True)
    return tables.write_variance(df, out / scale / "tables", passes, groups, examples)
