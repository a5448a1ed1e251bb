"""suite/results.py: schema, atomic run files, loading that reports and skips bad files."""

import filecmp
import math

import pandas as pd
import pytest

from suite import results
from suite.results import ResultsError


def _rows(n=3):
    return [
        dict(method="bfn_discrete", dataset="binary_heartbeat", split="test", metric="nll",
             n_steps=float(s), value=2.0 + i, stderr=0.1, unit="nats", bound="<=", n_repeats=5,
             n_examples=100, n_dims=20, protocol="one t per example", seed=0)
        for i, s in enumerate([10, 100, math.inf][:n])
    ]


def test_round_trip(tmp_path):
    prov = results.Provenance.collect()
    df = results.make_table(_rows(), run_id="run-a", provenance=prov, config={"lr": 1e-3})
    path = results.write_run(df, tmp_path)
    assert path.name == "run-a.parquet" and path.with_suffix(".csv").is_file()
    back = results.load_results(tmp_path)
    assert list(back.columns) == list(results.SCHEMA)
    assert back["value"].tolist() == [2.0, 3.0, 4.0]
    assert math.isinf(back["n_steps"].iloc[2])  # continuous time survives the round trip
    assert back["config_hash"].iloc[0] == results.config_hash({"lr": 1e-3})
    assert back["git_sha"].iloc[0] == prov.git_sha and back.attrs["skipped"] == []
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert csv["value"].tolist() == [2.0, 3.0, 4.0]


def test_runs_never_overwrite(tmp_path):
    df = results.make_table(_rows(), run_id="run-a")
    results.write_run(df, tmp_path)
    with pytest.raises(ResultsError, match="already exists"):
        results.write_run(df, tmp_path)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """A crash mid-write leaves neither a partial file nor a temporary one."""
    df = results.make_table(_rows(), run_id="run-b")

    def boom(self, path, **kw):
        with open(path, "wb") as f:
            f.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        results.write_run(df, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_foreign_files_are_skipped_and_reported(tmp_path, caplog):
    results.write_run(results.make_table(_rows(), run_id="good"), tmp_path)
    good = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    pd.DataFrame({"value": [1.0]}).to_parquet(tmp_path / "foreign.parquet")
    with caplog.at_level("WARNING"):
        df = results.load_results(tmp_path)
    assert len(df) == 3 and set(df["run_id"]) == {"good"}
    skipped = {p.split("/")[-1] for p, _ in df.attrs["skipped"]}
    assert skipped == {"truncated.parquet", "garbage.parquet", "foreign.parquet"}
    assert "skipping results file" in caplog.text


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(value=float("nan")), "missing"),
        (dict(value=float("inf")), "infinite"),
        (dict(bound="maybe"), "bound must be"),
        (dict(colour="red"), "unknown result column"),
    ],
)
def test_bad_rows_refused(change, match):
    rows = _rows(1)
    rows[0].update(change)
    with pytest.raises(ResultsError, match=match):
        results.make_table(rows, run_id="x")


def test_missing_required_column():
    rows = _rows(1)
    del rows[0]["unit"]
    with pytest.raises(ResultsError, match="required"):
        results.make_table(rows, run_id="x")


def test_missing_folder():
    with pytest.raises(ResultsError, match="does not exist"):
        results.load_results("/nonexistent/results")


def test_reference_numbers_are_the_shared_copy():
    """results/reference/paper_numbers.csv is an unedited copy of the shared reference."""
    shared = results.REPO_ROOT.parent / "shared" / "reference" / "paper_numbers.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} not beside this checkout")
    assert filecmp.cmp(shared, results.REFERENCE_DIR / "paper_numbers.csv", shallow=False)


def test_load_reference():
    ref = results.load_reference()
    raw = pd.read_csv(results.REFERENCE_DIR / "paper_numbers.csv", dtype=str, keep_default_na=False)
    assert len(ref) == len(raw)
    head = ref[(ref.paper == "bfn2023") & (ref.dataset == "binarized_mnist") & (ref.model == "BFN")]
    cont = head[head.n_steps == math.inf]
    published = raw.loc[(raw.model == "BFN") & (raw.dataset == "binarized_mnist") & (raw.n_steps == "inf"), "value"]
    assert len(cont) >= 1 and (cont["value"] == float(published.iloc[0])).all()
    assert set(ref["bound"]) <= set(results.BOUNDS)


def test_make_row_builds_the_rows_the_hand_written_dicts_did():
    """The one row constructor: the same dict as the literal rows evaluate() and bench wrote before it (keys
    given, None left out), so the tables written are unchanged; make_row(**row, extra=...) adds columns."""
    old_nll = dict(method="bfn_discrete", dataset="binary_heartbeat", split="test", metric="nll", n_steps=math.inf,
                   value=2.5, stderr=math.nan, unit="bits/seq", bound="<=", n_repeats=1, n_examples=40, n_dims=20,
                   seed=0, protocol="one pass; s.e. over examples")
    new = results.make_row(method="bfn_discrete", dataset="binary_heartbeat", split="test", metric="nll",
                           n_steps=math.inf, value=2.5, stderr=math.nan, unit="bits/seq", bound="<=", n_repeats=1,
                           n_examples=40, n_dims=20, seed=0, protocol="one pass; s.e. over examples")
    assert new.keys() == old_nll.keys() and all(
        new[k] == old_nll[k] or (k == "stderr" and math.isnan(new[k])) for k in old_nll)
    assert list(new) == [c for c in results.SCHEMA if c in new]  # schema order
    curve = dict(method="m", dataset="d", split="val", metric="val_loss_ema", n_steps=math.nan, value=1.0,
                 unit="nats", bound="<=", n_dims=3, seed=3, protocol="training curve at step 4", n_repeats=1,
                 n_params=18, train_info='{"step": 4}')
    made = results.make_row(**curve)
    assert made.keys() == curve.keys() and "stderr" not in made and "n_examples" not in made
    pd.testing.assert_frame_equal(results.make_table([made], run_id="r").drop(columns="created"),
                                  results.make_table([curve], run_id="r").drop(columns="created"))
    assert results.make_row(**_rows(1)[0], n_params=7, train_info="{}")["n_params"] == 7


@pytest.mark.parametrize("change, match", [({"bound": "<"}, "bound must be one of"),
                                           ({"unit": "furlongs"}, "unit must be one of")])
def test_make_row_refuses_a_bound_or_unit_outside_the_schema(change, match):
    with pytest.raises(ResultsError, match=match):
        results.make_row(**{**_rows(1)[0], **change})
