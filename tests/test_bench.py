"""`bfnbench bench` end to end on the toy method: the result rows, the variance table and the paper tables it
writes are pinned (tests/data/bench_snapshot.json), so that reshaping the orchestration cannot move a number, a
column or a character. Made before the bench was reshaped around suite.runtime (issue 14, which moved nothing);
regenerated once when issue 11 changed what the bench computes on purpose (validation bound in the history,
resolved standard errors over examples with systematic-t passes, the truth row): regenerate only for such a
change, and say so in the commit."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from suite import bench, results
from suite.experiments import Comparison
from tests.helpers.toy_method import Gauss as _Gauss  # noqa: F401  registers _test_blob, _test_gauss

SNAPSHOT = Path(__file__).parent / "data" / "bench_snapshot.json"
#: columns that differ from one run to the next (ids, clock, machine, paths in the config)
VOLATILE = ("run_id", "created", "git_sha", "git_dirty", "versions", "device", "config_hash")


def _comparison() -> Comparison:
    return Comparison(name="toy", dataset="_test_blob", paper_dataset="swiss_roll", backbone="none",
                      methods={"_test_gauss": {"noise": 0.01}},
                      train={"batch_size": 8, "max_steps": 12, "lr": 0.05, "seed": 3},
                      eval={"eval_n_steps": [10, None], "eval_repeats": 2, "eval_examples": 24,
                            "ckpt_every": 6, "val_every": 4, "log_every": 4})


def _cell(v):
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float):
        return "inf" if v == math.inf else float(f"{v:.12g}")
    if hasattr(v, "item"):
        return v.item()
    return v


def _rows(df: pd.DataFrame) -> list[dict]:
    out = []
    for r in df.drop(columns=list(VOLATILE)).to_dict("records"):
        r = {k: _cell(v) for k, v in r.items()}
        if r.get("train_info"):
            info = json.loads(r["train_info"])
            for k in ("train_seconds", "eval_seconds"):
                info.pop(k, None)
            r["train_info"] = info
        out.append(r)
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


def bench_outputs(tmp_path, monkeypatch) -> dict:
    monkeypatch.setattr(bench, "load_comparisons", lambda scale, only=None: [_comparison()])
    monkeypatch.setattr("suite.plots.write_all", lambda df, out: [])  # the toy data set has no paper plot
    out = tmp_path / "results"
    bench.run_bench("embedded", out=out, progress=False, samples=False)
    runs = out / "embedded" / "runs"
    df = results.load_results(runs)
    return {"columns": list(df.columns), "files": sorted(p.name.split(".")[0] for p in runs.glob("*.parquet")),
            "rows": _rows(df),
            "variance_md": (out / "embedded" / "tables" / "variance.md").read_text(),
            "variance_csv": (out / "embedded" / "tables" / "variance.csv").read_text(),
            "tables_md": (out / "embedded" / "tables" / "tables.md").read_text()}


# Float32 rounding differs between CPUs' vector kernels. Emulating other CPUs (ATEN_CPU_CAPABILITY,
# MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA, NUMBA_CPU_NAME at AVX2 and at baseline x86-64) moved the toy
# bench's values by at most 4.4e-8 relative, its standard errors by 1.8e-6 and their ratios by 2.1e-6
# (differences of nearly equal numbers). Numbers are compared within REL (about 5x the worst) or ABS, or one
# unit of their last printed digit (a rounding boundary crossed). Columns, files and the text around the
# numbers must match exactly; the likelihood values themselves are gated by tests/test_regression.py.
REL, ABS = 1e-5, 1e-6
_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _close(a: float, b: float, unit: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS) or abs(a - b) <= unit * 1.000001


def _same(got, want, path="") -> list[str]:
    """Where got differs from want beyond float rounding (an empty list: the same)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if got.keys() != want.keys():
            return [f"{path}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want for d in _same(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} items != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in _same(g, w, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, float):
        return [] if _close(got, want) else [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, str) and isinstance(got, str) and want != got:
        if _NUM.sub("#", got) != _NUM.sub("#", want):
            return [f"{path}: text differs beyond its numbers"]
        bad = []
        for g, w in zip(_NUM.findall(got), _NUM.findall(want), strict=True):
            digits = len(w.split(".")[1].lower().split("e")[0]) if "." in w else 0
            unit = 10.0 ** -digits if "e" not in w.lower() else 0.0
            if not _close(float(g), float(w), unit):
                bad.append(f"{path}: number {g} != {w}")
        return bad
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def test_bench_rows_and_tables_are_unchanged(tmp_path, monkeypatch):
    got = json.loads(json.dumps(bench_outputs(tmp_path, monkeypatch)))
    want = json.loads(SNAPSHOT.read_text())
    assert got.keys() == want.keys()
    for k in want:
        diffs = _same(got[k], want[k], k)
        assert not diffs, "\n".join(diffs[:20])


def test_the_snapshot_comparison_tolerates_rounding_only():
    """Negative control of the comparison above: float rounding passes, a moved number or word does not."""
    assert _same({"v": 13.0770010397, "s": 0.00463064720637}, {"v": 13.0770011257, "s": 0.00463058987882}) == []
    assert _same("| a | 12.7168 |", "| a | 12.7169 |") == []  # a rounding boundary: one unit of the last digit
    assert _same({"v": 13.0775}, {"v": 13.0770}) != []  # 4e-5 relative: a real change
    assert _same("| a | 12.7188 |", "| a | 12.7168 |") != []
    assert _same("| a | 12.7168 |", "| b | 12.7168 |") != []
    assert _same(["x"], ["x", "y"]) != []


def test_variance_study_finds_tuned_runs_shortened_by_an_override(tmp_path, monkeypatch):
    """A `max_steps=` override shorter than the search's `tune.steps` shortens the search too (tuned_config);
    the variance study must look for the search runs at that same step count. (It looked at tune.steps, found
    nothing, and write_variance then failed on the empty frame.)"""
    comp = _comparison()
    comp.tune = {"lr": [0.05, 0.02], "steps": 8}
    monkeypatch.setattr(bench, "load_comparisons", lambda scale, only=None: [comp])
    monkeypatch.setattr("suite.plots.write_all", lambda df, out: [])
    out = tmp_path / "results"
    bench.run_bench("embedded", out=out, overrides=["max_steps=4"], progress=False, samples=False)
    var = pd.read_csv(out / "embedded" / "tables" / "variance.csv")
    assert sorted(var["n_steps"].tolist()) == [10, math.inf] and set(var["method"]) == {"_test_gauss"}


def test_tables_leave_out_runs_of_comparisons_no_longer_configured(tmp_path, monkeypatch, capsys):
    """A run file an older bench wrote for a comparison/method since dropped from the configs stays on disk,
    is named on stdout, and reaches no table or plot (the tables once mixed such runs, on other data, in)."""
    seen = []
    monkeypatch.setattr(bench, "load_comparisons", lambda scale, only=None: [_comparison()])
    monkeypatch.setattr("suite.plots.write_all", lambda df, out: seen.append(df) or [])
    out = tmp_path / "results"
    runs = out / "embedded" / "runs"
    bench.run_bench("embedded", out=out, progress=False, samples=False)
    (mine,) = runs.glob("toy___test_gauss.*.parquet")
    stale = pd.read_parquet(mine).assign(value=1234.5)
    stale.to_parquet(runs / "gone___test_gauss.old-run.parquet")
    capsys.readouterr()
    bench.run_bench("embedded", out=out, progress=False, samples=False)  # reuses the finished run
    printed = capsys.readouterr().out
    assert "gone___test_gauss.old-run.parquet is not a run of any embedded comparison" in printed
    assert (runs / "gone___test_gauss.old-run.parquet").exists()
    assert 1234.5 not in seen[-1]["value"].tolist() and len(seen[-1]) == len(seen[0])
    assert "1234" not in (out / "embedded" / "tables" / "tables.md").read_text()


def test_bench_only_keeps_the_other_comparisons_variance_rows(tmp_path, monkeypatch):
    """`bench --only A` re-studies A and keeps B's rows of variance.csv (it once rewrote the table with A's alone)."""
    a, b = _comparison(), _comparison()
    b.name = "toy_b"
    monkeypatch.setattr(bench, "load_comparisons",
                        lambda scale, only=None: [c for c in (a, b) if not only or c.name in only])
    monkeypatch.setattr("suite.plots.write_all", lambda df, out: [])
    out = tmp_path / "results"
    bench.run_bench("embedded", out=out, progress=False, samples=False)
    before = pd.read_csv(out / "embedded" / "tables" / "variance.csv")
    bench.run_bench("embedded", out=out, only=["toy"], progress=False, samples=False)
    after = pd.read_csv(out / "embedded" / "tables" / "variance.csv")
    assert list(after["comparison"]) == list(before["comparison"]) == ["toy", "toy", "toy_b", "toy_b"]
    pd.testing.assert_frame_equal(after, before)  # the same runs and seeds: the same numbers


def test_variance_table_of_no_runs_says_so(tmp_path):
    from suite import tables

    md = tables.write_variance(pd.DataFrame(), tmp_path, 16, 4, 200).read_text()
    assert "No finished run" in md and (tmp_path / "variance.csv").exists()


if __name__ == "__main__":  # regenerate the snapshot: python -m tests.test_bench TMPDIR
    import sys

    mp = pytest.MonkeyPatch()
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(bench_outputs(Path(sys.argv[1]), mp), indent=1, sort_keys=True) + "\n")
    mp.undo()
