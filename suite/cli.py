"""`bfnbench`: the suite's command line.

    bfnbench data list                       every data set: kind, shape, split sizes, bytes present
    bfnbench data show NAME [--out F.png]    a grid of examples (PNG) or text samples
    bfnbench train [CONFIG.yaml] [key=value ...] [--resume]
    bfnbench eval RUN_DIR [--n-steps 10 100 inf] [--repeats N] [--split test]
    bfnbench sample RUN_DIR [--n-steps 10 100] [--num 64]
    bfnbench bench [--scale embedded|paper] [--only NAME ...] [key=value ...]
    bfnbench tables | plots [--results DIR] [--out DIR]
    bfnbench regress check | train [--reference F] [--case NAME ...]   likelihood regression gate
    bfnbench regress record RUN_DIR ... --reference F [--retrain-seeds 10]   references for your own runs
    bfnbench regress refresh [--case NAME ...]                          re-measure this project's CI models
    bfnbench methods                         registered methods
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: sub-commands whose positional key=value overrides may also come after (or between) flags
_OVERRIDE_CMDS = ("train", "eval", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"bfnbench: error: {message}; see `{self.prog} --help`\n")


def _writable(folder, label: str, fix: str) -> None:
    from suite.config import check_writable

    check_writable(folder, label, fix)


def _steps(values: list[str]) -> list[int | None]:
    out = []
    for v in values:
        if v.lower() in ("inf", "continuous", "none"):
            out.append(None)
        else:
            try:
                n = int(v)
            except ValueError:
                hint = "; put key=value overrides before --n-steps" if "=" in v else ""
                raise SystemExit(f"bfnbench: step count {v!r} is not an integer or 'inf'{hint}") from None
            if n < 1:
                raise SystemExit(f"bfnbench: step count must be >= 1, got {n}")
            out.append(n)
    return out


def cmd_data(args) -> int:
    from suite.data import show

    if args.data_cmd == "list":
        import pandas as pd

        df = show.describe(args.data_dir)
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
            print(df.drop(columns=[c for c in ("source",) if c in df.columns]).to_string(index=False))
        return 0
    out = args.out or f"{args.name}.png"
    res = show.show(args.name, out, n=args.n, seed=args.seed, data_dir=args.data_dir)
    if isinstance(res, list):
        for i, s in enumerate(res):
            print(f"[{i}] {s}")
    else:
        print(f"wrote {res if res else out}")
    return 0


def _load_run(run_dir: str, overrides: list[str]):
    from suite.runtime import load_run

    return load_run(run_dir, overrides)  # the one path from a run folder to a model (suite/runtime.py)


def cmd_train(args) -> int:
    from suite.config import load_config
    from suite.train import train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"checkpoints in {run_dir}")
    return 0


def cmd_eval(args) -> int:

    from suite import results
    from suite.evaluate import evaluate
    from suite.runtime import runtime_for

    # before any work: an evaluation whose numbers cannot be written is not started
    _writable(args.out, "eval --out", "pass --out DIR, a folder you can write")
    cfg, method, data = _load_run(args.run_dir, args.overrides)
    info, device = runtime_for(cfg.device)  # under torchrun: shard the split across ranks
    method.to(device)
    n_list = _steps(args.n_steps) if args.n_steps else cfg.eval_n_steps
    rows = evaluate(method, data, n_steps_list=n_list, split=args.split or cfg.eval_split,
                    n_repeats=args.repeats or cfg.eval_repeats, batch_size=cfg.eval_batch_size,
                    max_examples=args.max_examples or cfg.eval_examples, seed=cfg.seed, device=device,
                    progress=True)
    if not info.main:
        return 0  # rank 0 holds the all-reduced numbers and writes them
    table = results.make_table(rows, run_id=results.new_run_id(f"eval-{cfg.name}"),
                               provenance=results.Provenance.collect(device), config=cfg.to_dict())
    path = results.write_run(table, args.out)
    show = table[["method", "dataset", "n_steps", "value", "stderr", "unit", "bound"]]
    print(show.to_string(index=False))
    print(f"wrote {path}")
    return 0


def cmd_sample(args) -> int:
    import torch

    from suite.data import show
    from suite.runtime import resolve_device

    cfg, method, data = _load_run(args.run_dir, [])
    method.to(resolve_device(cfg.device))
    out = Path(args.out or Path(args.run_dir) / "samples")
    _writable(out, "sample --out", "pass --out DIR, a folder you can write")
    out.mkdir(parents=True, exist_ok=True)
    for n in _steps(args.n_steps):
        g = torch.Generator(device=method.device).manual_seed(args.seed)
        x = method.sample(args.num, n, generator=g).cpu()
        res = show.render(data.spec, x, out / f"samples_n{n}.png", title=f"{cfg.method}, {n} steps")
        if isinstance(res, list):
            print(f"--- {n} steps")
            for s in res:
                print(s)
        else:
            print(f"wrote {res}")
    return 0


def cmd_bench(args) -> int:
    from suite.bench import run_bench

    _writable(args.out, "bench --out", "pass --out DIR, a folder you can write")
    run_bench(args.scale, out=args.out, only=args.only, overrides=args.overrides, progress=not args.quiet,
              samples=not args.no_samples)
    return 0


def cmd_variance(args) -> int:
    from suite.bench import variance_study

    print(f"wrote {variance_study(args.scale, args.out, args.only, passes=args.passes, groups=args.groups)}")
    return 0


def cmd_reproduce(args) -> int:
    from suite.reproduce import reproduce, write

    _writable(args.out, "reproduce --out", "pass --out DIR, a folder you can write")
    steps = None if args.n_steps is None else [float("inf") if n is None else n for n in _steps(args.n_steps)]
    rows = reproduce(Path(args.checkpoints), Path(args.data_dir) if args.data_dir else None, tables=args.tables,
                     protocol=args.protocol, repeats=args.repeats, budget=args.budget, max_examples=args.max_examples,
                     steps=steps, seed=args.seed, device=args.device, progress=not args.quiet,
                     quirks=None if args.quirks is None else tuple(q for q in args.quirks if q != "none"))
    csv, md = write(rows, Path(args.out))
    print(md.read_text())
    print(f"wrote {md} and {csv}")
    return 0


def _results_for(args):
    """The results under --results, or a clear error where there are none (not a silent exit 0)."""
    from suite import results

    _writable(args.out, f"{args.cmd} --out", "pass --out DIR, a folder you can write")
    df = results.load_results(args.results)
    if df.empty:
        skipped = df.attrs.get("skipped", [])
        why = (f" ({len(skipped)} unreadable file(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped
               else " (no *.parquet run files)")
        raise results.ResultsError(f"no results in {args.results}{why}: run `bfnbench eval RUN_DIR` or "
                                   "`bfnbench bench` first, or pass --results DIR")
    return df


def cmd_tables(args) -> int:
    from suite import compare, tables

    df = _results_for(args)
    # the per-example estimates the bench saved beside runs/ (paired differences, gaps, claims), when present
    examples = Path(args.examples) if args.examples else Path(args.results).parent / "examples"
    written, cells = compare.write_all(examples, args.out) if examples.is_dir() else ([], None)
    for p in written + tables.write_all(df, args.out, cells=cells):
        print(f"wrote {p}")
    return 0


def cmd_plots(args) -> int:
    from suite import plots

    df = _results_for(args)
    for p in plots.write_all(df, args.out):
        print(f"wrote {p}")
    return 0


def cmd_regress(args) -> int:
    import pandas as pd

    from suite import regression as rg

    ref_path = Path(args.reference) if args.reference else rg.REF_CSV
    if args.regress_cmd == "record":
        if not args.runs:
            raise SystemExit("bfnbench: regress record needs the run folders to record, e.g. "
                             "`bfnbench regress record runs/my_bfn --reference ci/likelihoods.csv`")
        base = ref_path.parent.resolve()
        cases = [rg.Case(Path(r).name, os.path.relpath(Path(r).resolve(), base), tuple(_steps(args.n_steps)),
                         args.repeats, args.groups, args.examples) for r in args.runs]
        table = rg.record(cases, base, args.retrain_seeds,
                          rg.variants(args.threads, args.kernels, args.isa) if (args.threads or args.kernels or args.isa)
                          else None)
        rg.write_reference(table, ref_path)
        shown = table[["case", "kind", "n_steps", "value", "stderr", "spread", "band", "n_variants"]]
        print(f"wrote {ref_path}:")
    elif args.regress_cmd == "refresh":
        if args.reference:
            raise SystemExit("bfnbench: regress refresh rewrites this project's own CI models; for your runs use "
                             "`bfnbench regress record RUN_DIR ... --reference FILE`")
        shown = rg.refresh(args.case, seeds=args.retrain_seeds or rg.SEEDS)
        print("refreshed the CI references (old beside new):")
    else:
        kind = "checkpoint" if args.regress_cmd == "check" else "retrain"
        ref = rg.load_reference(ref_path)
        made = ref.iloc[0]
        print(f"reference {ref_path}: made on {made.get('cpu_model', '?')}, torch {made.get('torch_version', '?')}, "
              f"{made.get('threads', '?')} thread(s), {made.get('made_at', '?')}")
        here = rg.provenance()
        print(f"this run: {here['cpu_model']}, torch {here['torch_version']}, 1 thread")
        shown = rg.check(ref_path, kind, args.case)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if args.regress_cmd in ("check", "train") and shown["moved"].any():
        print(f"bfnbench: {int(shown['moved'].sum())} likelihood(s) moved beyond their band "
              f"({shown.loc[shown['moved'], 'case'].str.cat(sep=', ')})", file=sys.stderr)
        return 1
    return 0


def cmd_methods(args) -> int:
    from suite.methods import method_names

    print("\n".join(method_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bfnbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="list or show data sets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--data-dir", default=None)
    ds = dsub.add_parser("show")
    ds.add_argument("name")
    ds.add_argument("--out", default=None)
    ds.add_argument("--n", type=int, default=64)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--data-dir", default=None)
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a method (config YAML and/or key=value overrides)")
    t.add_argument("config", nargs="?", default=None, help="a YAML preset; omit to use defaults")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. max_steps=200 method_kwargs.beta1=3")
    t.add_argument("--resume", action="store_true", help="continue the run's latest checkpoint")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="NLL bound of a trained run for a list of step counts")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--n-steps", nargs="+", default=None, help="e.g. 10 25 100 inf (inf = continuous time)")
    e.add_argument("--repeats", type=int, default=None)
    e.add_argument("--split", default=None, choices=["train", "val", "test"])
    e.add_argument("--max-examples", type=int, default=None)
    e.add_argument("--out", default="results/runs")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="samples of a trained run for each step count")
    s.add_argument("run_dir")
    s.add_argument("--n-steps", nargs="+", default=["10", "100"])
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None)
    s.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="the benchmark end to end: train, evaluate, tables, plots")
    b.add_argument("overrides", nargs="*", help="key=value applied to every run, e.g. max_steps=100")
    b.add_argument("--scale", default="embedded", choices=["embedded", "paper"])
    b.add_argument("--only", nargs="+", default=None, help="comparison names to run")
    b.add_argument("--out", default="results")
    b.add_argument("--no-samples", action="store_true")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("variance", help="plain against systematic t, same network evaluations, on trained bench runs")
    v.add_argument("--scale", default="embedded", choices=["embedded", "paper"])
    v.add_argument("--only", nargs="+", default=None)
    v.add_argument("--out", default="results")
    v.add_argument("--passes", type=int, default=16)
    v.add_argument("--groups", type=int, default=4)
    v.set_defaults(func=cmd_variance)

    for name, fn, what in (("tables", cmd_tables, "paper tables"), ("plots", cmd_plots, "plots")):
        q = sub.add_parser(name, help=f"regenerate the {what} from a results folder")
        q.add_argument("--results", default="results/embedded/runs")
        q.add_argument("--out", default=f"results/embedded/{name}")
        if name == "tables":
            q.add_argument("--examples", default=None,
                           help="per-example estimates (default: examples/ beside --results) for paired "
                                "differences, gaps to the truth and the claims")
        q.set_defaults(func=fn)

    r = sub.add_parser("regress", help="likelihood regression: gate NLL bounds against measured references",
                       description=(
                           "check: evaluate each reference checkpoint (guarantee 'checkpoint'); train: retrain each "
                           "from its config and seed (guarantee 'retrain'); record: write a reference file for your "
                           "own run folders, bands measured here; refresh: retrain and re-measure this project's tiny "
                           "CI models. Exit 1 when a value leaves its band."))
    r.add_argument("regress_cmd", choices=["check", "train", "record", "refresh"])
    r.add_argument("runs", nargs="*", help="record: run folders (from `bfnbench train`) or ckpt-* folders")
    r.add_argument("--reference", default=None,
                   help="reference CSV (default: this project's results/reference/ci_likelihoods.csv)")
    r.add_argument("--case", nargs="+", default=None, help="check/train/refresh only these cases")
    r.add_argument("--n-steps", nargs="+", default=["10", "inf"], help="record: step counts to gate")
    r.add_argument("--repeats", type=int, default=32, help="record: evaluation passes (systematic t)")
    r.add_argument("--groups", type=int, default=4, help="record: independent groups of passes")
    r.add_argument("--examples", type=int, default=200, help="record: test examples per pass")
    r.add_argument("--retrain-seeds", type=int, default=0,
                   help="record: also measure the retrain guarantee from this many retrainings (10 or more)")
    r.add_argument("--threads", nargs="+", type=int, default=None, help="record: thread counts to measure (1 2 4)")
    r.add_argument("--kernels", nargs="+", default=None, choices=["compiled", "torch"],
                   help="record: k-hat kernels to measure (compiled torch)")
    r.add_argument("--isa", nargs="+", default=None, choices=["native", "avx2", "baseline"],
                   help="record: instruction sets to measure (native avx2 baseline, on x86-64)")
    r.set_defaults(func=cmd_regress)

    rp = sub.add_parser("reproduce", help="BFN paper Tables 1-5 from the official pretrained checkpoints")
    rp.add_argument("--checkpoints", required=True, help="folder with mnist_ema.pt, cifar10_256d_ema.pt, ...")
    rp.add_argument("--data-dir", default=None, help="folder with the MNIST, CIFAR-10 and text8 files")
    rp.add_argument("--tables", nargs="+", type=int, default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    rp.add_argument("--protocol", default="reference", choices=["reference", "suite"],
                    help="reference: the official test.py's estimator; suite: cheaper systematic-t estimator")
    rp.add_argument("--repeats", type=int, default=None, help="passes per cell (default: the protocol's)")
    rp.add_argument("--budget", type=float, default=None, help="seconds per cell: repeats/examples cut to fit")
    rp.add_argument("--max-examples", type=int, default=None, help="only the first N test examples")
    rp.add_argument("--n-steps", nargs="+", default=None, help="only these step counts (inf = continuous time)")
    rp.add_argument("--quirks", nargs="+", default=None,
                    help="official-code quirks of the BFN cells: names from suite.bfn.continuous.QUIRKS, "
                         "'official' (all that apply) or 'none' (the exact computation); default: the protocol's")
    rp.add_argument("--seed", type=int, default=1)
    rp.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    rp.add_argument("--out", default="results/reproduce")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_reproduce)

    m = sub.add_parser("methods", help="list registered methods")
    m.set_defaults(func=cmd_methods)
    return p


def _parse(argv: list[str] | None):
    """Parse; key=value overrides given after or between flags (`train a=1 --quiet b=2`) join the others."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        cmd = getattr(args, "cmd", None)
        bad = extra if cmd not in _OVERRIDE_CMDS else [a for a in extra if a.startswith("-") or "=" not in a]
        if bad:
            where = f"bfnbench {cmd}" if cmd else "bfnbench"
            parser.exit(2, f"bfnbench: error: unrecognized arguments: {' '.join(bad)}; see `{where} --help`\n")
        args.overrides = list(args.overrides) + extra
    # train's `config` positional also swallows the first key=value; move it back
    if getattr(args, "cmd", None) == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import yaml

    from suite.checkpoint import CheckpointError
    from suite.config import ConfigError
    from suite.data import DataError
    from suite.results import ResultsError
    from suite.train import TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, ResultsError, TrainingDiverged, FloatingPointError, OSError,
            yaml.YAMLError, KeyError, ValueError, TypeError) as e:
        # bad input: one clear line, no traceback (set BFNBENCH_DEBUG=1 for one)
        if os.environ.get("BFNBENCH_DEBUG"):
            raise
        text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
        print(f"bfnbench: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
