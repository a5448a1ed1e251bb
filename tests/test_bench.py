"""`bfnbench bench` end to end on the toy method: the result rows, the variance table and the paper tables it
writes are pinned (tests/data/bench_snapshot.json, made before the bench was reshaped around suite.runtime),
so that reshaping the orchestration cannot move a number, a column or a character."""

import json
import math
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


def test_bench_rows_and_tables_are_unchanged(tmp_path, monkeypatch):
    got = json.loads(json.dumps(bench_outputs(tmp_path, monkeypatch)))
    want = json.loads(SNAPSHOT.read_text())
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], k


if __name__ == "__main__":  # regenerate the snapshot: python -m tests.test_bench TMPDIR
    import sys

    mp = pytest.MonkeyPatch()
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(bench_outputs(Path(sys.argv[1]), mp), indent=1, sort_keys=True) + "\n")
    mp.undo()
