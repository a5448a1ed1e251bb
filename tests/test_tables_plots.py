"""Paper tables and plots from a results table: layout, unit conversion, stand-in and `recalled` labels."""

import math

import pandas as pd
import pytest

from suite import plots, results, tables, units


def _row(method, dataset, n, value_nats, D, se=0.0, unit="nats"):
    return dict(method=method, dataset=dataset, split="test", metric="nll", n_steps=n, value=value_nats,
                stderr=se, unit=unit, bound="<=", n_dims=D, n_repeats=4, n_examples=1000)


@pytest.fixture
def df():
    rows = [_row("bfn_discrete", "mnist_embedded_binarized", n, v, 784, 0.5)
            for n, v in [(10.0, 120.0), (100.0, 95.0), (math.inf, 90.0)]]
    # 1.0 bits/dim on 784 dims, stored in nats: the table must convert it back
    rows += [_row("bfn_discretised", "mnist_embedded_256", math.inf, 784 * math.log(2), 784, 0.0)]
    rows += [_row("sohl_binomial", "binary_heartbeat", 100.0, 3.0 * math.log(2), 20, 0.0)]  # K = -3 bits
    rows += [dict(_row("null", "binary_heartbeat", math.nan, 10.0 * math.log(2), 20), bound="=")]  # 10 bits
    return results.make_table(rows, run_id="t")


def test_table2_steps_beside_published(df):
    t = tables.build_tables(df)["bfn_table2_mnist_steps"]
    r10 = t[t["n steps"] == "10"].iloc[0]
    assert r10["binarized_mnist: published"] == "95.21"  # secondary, no dagger
    assert r10["binarized_mnist: bfnbench"].startswith("120.00 ± 0.50") and "stand-in" in r10["binarized_mnist: bfnbench"]
    r784 = t[t["n steps"] == "784"].iloc[0]
    assert r784["binarized_mnist: published"] == "78.02" + tables.DAGGER  # recalled is marked
    assert r784["binarized_mnist: bfnbench"] == "—"
    assert "∞ (continuous)" in set(t["n steps"])


def test_units_converted_to_the_papers(df):
    t = tables.build_tables(df)["bfn_table3_cifar10_steps"]
    cont = t[t["n steps"] == "∞ (continuous)"].iloc[0]
    assert cont["cifar10_8bit discretised: bfnbench"].startswith("1.000")  # 784 ln2 nats on 784 dims = 1 bit/dim
    assert units.convert(784 * math.log(2), "nats", "bits/dim", 784) == pytest.approx(1.0)


def test_sohl_table_gain_over_null(df):
    t = tables.build_tables(df)["sohl_table1"]
    hb = t[t["data set"] == "binary_heartbeat"].iloc[0]
    assert hb["K published"] == "-2.414"
    assert hb["K bfnbench"].startswith("-3.000")
    assert hb["K - L_null bfnbench"].startswith("7.000")  # L_null = -10 bits, K = -3 bits


def test_write_all_markdown_latex_and_plots(df, tmp_path):
    written = tables.write_all(df, tmp_path / "tables")
    md = (tmp_path / "tables" / "tables.md").read_text()
    assert "BFN Table 2" in md and tables.DAGGER in md and "stand-in" in md
    assert any(p.suffix == ".tex" for p in written)
    assert "\\begin{tabular}" in (tmp_path / "tables" / "bfn_table2_mnist_steps.tex").read_text()
    figs = plots.write_all(df, tmp_path / "plots")
    assert {p.suffix for p in figs} == {".png", ".pdf"} and all(p.stat().st_size > 1000 for p in figs)


def test_fixed_colours():
    assert plots.colour("bfn_discrete") == plots.COLOURS["bfn_discrete"]
    assert plots.colour("unknown_method") == plots.colour("unknown_method")
    assert len(set(plots.COLOURS.values())) == len(plots.COLOURS)


def test_reference_frame_only_used_read_only():
    ref = results.load_reference()
    before = ref.copy()
    tables.build_tables(results.make_table([_row("bfn_discrete", "text_embedded", math.inf, 256.0, 256)], run_id="x"), ref)
    pd.testing.assert_frame_equal(ref, before)


def test_published_numbers_shown_verbatim(df):
    """Published cells repeat paper_numbers.csv's text: no rounding (1.489), no lost s.e. (± 0.001)."""
    t4 = tables.build_tables(df)["bfn_table4_text8"]
    assert t4.loc[t4["model"] == "OA-ARDM (order-agnostic)", "published"].item() == "1.43 ± 0.001"
    s = tables.build_tables(df)["sohl_table1"]
    assert s.loc[s["data set"] == "dead_leaves", "K published"].item() == "1.489"
    assert tables._fmt(1.2345, 0.0004, 2) == "1.23 ± 0.0004"


def test_models_table_takes_the_largest_grid_of_its_own_data_set(df):
    """A discrete-time method evaluated on two data sets (T = 2000 on one, 1000 on the other) appears in
    each paper table with the full grid of that table's data set."""
    rows = [_row("sohl_binomial", "mnist_embedded_binarized", n, v, 784) for n, v in [(10.0, 150.0), (1000.0, 99.0)]]
    rows += [_row("sohl_binomial", "binary_heartbeat", 2000.0, 2.0, 20)]
    t = tables.build_tables(results.make_table(rows, run_id="y"))["bfn_table1_mnist"]
    ours = t[t["model"].str.contains("sohl_binomial")]
    assert len(ours) == 1 and "n=1000" in ours["model"].item() and ours["bfnbench"].item().startswith("99.00")


def test_one_formatter_for_markdown_and_latex():
    t = pd.DataFrame({"a": [1.5], "b": ["x_y"]})
    assert tables.markdown(t) == t.to_markdown(index=False) and tables.markdown(t.iloc[:0]) == "(no rows)"
    assert tables.latex(t, "Cap", "tab:x") == t.to_latex(index=False, caption="Cap", label="tab:x", escape=True)
    assert tables.latex(t.iloc[:0], "Cap", "tab:x") == "% no rows\n"


def test_variance_table_formatted_as_bench_formatted_it(tmp_path):
    """write_variance (moved out of bench.py) formats the committed variance.csv exactly as bench's own code did
    (that code, verbatim, below); its header and grid are the committed variance.md's (the cells can differ in the
    last digit only because the CSV keeps 6 significant figures)."""
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results" / "embedded" / "tables"
    df = pd.read_csv(committed / "variance.csv")
    got = tables.write_variance(df, tmp_path, 16, 4, 200).read_text()
    passes, groups, examples = 16, 4, 200
    fmt = df.copy()
    fmt["n_steps"] = fmt["n_steps"].map(lambda v: "∞" if v == math.inf else str(int(v)))
    for est in ("plain", "systematic"):
        fmt[est] = [f"{v:.4g} ± {s:.2g}" for v, s in zip(df[est], df[f"{est}_se"], strict=True)]
    fmt["se_ratio"] = fmt["se_ratio"].map(lambda v: f"{v:.2f}")
    want = (f"# Plain against systematic t, {passes} passes over {examples} test examples each\n\n"
            f"plain: s.e. over {passes} i.i.d. passes; systematic: {groups} independent groups of {passes // groups} "
            "evenly spaced passes, s.e. over group means (suite/timesteps.py). se_ratio = plain s.e. / systematic "
            "s.e.: the factor by which the systematic estimator cuts the standard error for the same network "
            "evaluations.\n\n"
            + fmt[["comparison", "method", "n_steps", "unit", "plain", "systematic", "se_ratio"]].to_markdown(index=False)
            + "\n")
    assert got == want
    assert got.splitlines()[:6] == (committed / "variance.md").read_text().splitlines()[:6]
    assert len(got.splitlines()) == len((committed / "variance.md").read_text().splitlines())
    assert (tmp_path / "variance.csv").read_text() == (committed / "variance.csv").read_text()
