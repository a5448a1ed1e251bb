"""Resolved evaluation, convergence, paired differences and the claims' verdicts (suite/compare.py,
suite/evaluate.py evaluate_resolved), each against an independent computation or a negative control."""

import math

import numpy as np
import pandas as pd
import pytest

from suite import compare, units
from suite.evaluate import evaluate_resolved, nll_passes, se_target
from tests.test_evaluate import _Seq, _TimeMethod


def test_passes_added_later_are_the_passes_of_one_longer_call():
    """start=4 continues the random-number streams exactly: passes 0-3 then 4-7 equal passes 0-7 in one call."""
    d, m = _Seq(), _TimeMethod(_Seq().spec)
    _, whole, _ = nll_passes(m, d, n_repeats=8, batch_size=16, seed=5, estimator="systematic", keep_all=True)
    _, a, _ = nll_passes(m, d, n_repeats=4, batch_size=16, seed=5, estimator="systematic", groups=1, keep_all=True)
    _, b, _ = nll_passes(m, d, n_repeats=4, batch_size=16, seed=5, estimator="systematic", groups=1, start=4,
                         keep_all=True)
    # systematic groups of 4: one call with groups=2 is the same two groups
    _, whole2, _ = nll_passes(m, d, n_repeats=8, batch_size=16, seed=5, estimator="systematic", groups=2,
                              keep_all=True)
    assert whole.shape == (8, 60)
    np.testing.assert_array_equal(np.concatenate([a, b]), whole2)
    with pytest.raises(ValueError, match="multiple of the group size"):
        nll_passes(m, d, n_repeats=4, estimator="systematic", groups=1, start=2)


def test_resolved_value_and_stderr_are_the_mean_and_se_over_examples():
    """value = mean over examples of each example's mean over passes; s.e. = sd / sqrt(N) of those means; the
    estimate of E_t[|x|_1 + 30 t^2] = |x|_1 + 10 per example (the _TimeMethod closed form) within 4 s.e."""
    d = _Seq(n=60)
    m = _TimeMethod(d.spec)
    rows, per = evaluate_resolved(m, d, n_steps_list=[None], batch_size=16, seed=2, unit="nats", group=4,
                                  min_groups=2, max_groups=2)
    v = per[math.inf]
    assert v.shape == (60,)
    assert rows[0]["value"] == pytest.approx(v.mean(), rel=1e-12)
    assert rows[0]["stderr"] == pytest.approx(v.std(ddof=1) / math.sqrt(60), rel=1e-12)
    assert rows[0]["n_repeats"] == 8
    exact = d.examples("test").abs().sum(1).double().numpy() + 10
    assert abs(v.mean() - exact.mean()) < 4 * (v - exact).std(ddof=1) / math.sqrt(60)


class _Det(_TimeMethod):
    """No Monte-Carlo noise at all: nll = |x|_1."""

    def nll(self, x, n_steps=None):
        return x.abs().sum(1).double()


def test_resolved_evaluation_adds_passes_until_the_target_and_no_more():
    """No Monte-Carlo noise and a spread over examples under the 0.5-nat floor: it stops after min_groups. Data
    scaled 100x: the spread over examples alone is far above the target, so every group is spent and the row
    says the target was not met."""
    d = _Seq(n=60)
    rows, _ = evaluate_resolved(_Det(d.spec), d, n_steps_list=[None], unit="nats", group=2, min_groups=1,
                                max_groups=3)
    assert rows[0]["stderr"] <= 0.5 and rows[0]["n_repeats"] == 2 and "target max(1 %, 0.5 nats) met" in rows[0]["protocol"]

    class Big(_Seq):
        def examples(self, split):
            return 100 * self._x

    rows, _ = evaluate_resolved(_Det(d.spec), Big(), n_steps_list=[None], unit="nats", group=2, min_groups=1,
                                max_groups=3)
    assert rows[0]["n_repeats"] == 6 and "NOT met" in rows[0]["protocol"]


def test_se_target_is_one_percent_or_the_floor():
    assert se_target(300.0, "nats/image") == pytest.approx(3.0)
    assert se_target(20.0, "nats/image") == 0.5
    assert se_target(0.5, "bits/dim") == 0.01 and se_target(2.9, "BPC") == pytest.approx(0.029)
    with pytest.raises(ValueError, match="no standard-error floor"):
        se_target(1.0, "furlongs")


def _hist(values, every=500):
    return [{"step": every * (i + 1), "val_bound_ema": v} for i, v in enumerate(values)]


def test_convergence_criterion():
    """Still falling: v(s0) - v(end) > max(1 % of |v(end)|, floor), s0 the last validation at or before 75 %."""
    D = 784
    nats = units.to_nats(1.0, "bits/dim", D)  # 1 bit/dim in nats per image
    flat = compare.convergence(_hist([2.0 * nats, 1.5 * nats, 1.2 * nats, 1.2 * nats, 1.199 * nats, 1.198 * nats]),
                               "bits/dim", D)
    assert flat["still_falling"] is False and flat["from_step"] == 2000 and flat["to_step"] == 3000
    falling = compare.convergence(_hist([2.0 * nats, 1.5 * nats, 1.3 * nats, 1.25 * nats, 1.22 * nats, 1.2 * nats]),
                                  "bits/dim", D)
    assert falling["still_falling"] is True
    assert falling["drop_nats"] == pytest.approx(0.05 * nats)
    assert falling["threshold_nats"] == pytest.approx(max(0.012, 0.01) * nats)
    assert compare.convergence(_hist([1.0]), "bits/dim", D)["still_falling"] is None


def test_paired_difference_is_the_mean_and_se_of_per_example_differences():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, 400)
    b = a + rng.normal(0.5, 0.2, 400)  # b worse by 0.5 with tiny paired noise, invisible to unpaired s.e.
    d = compare.paired(a, b)
    assert d.mean == pytest.approx((a - b).mean()) and d.se == pytest.approx((a - b).std(ddof=1) / 20)
    assert d.significant()
    unpaired = math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    assert abs(d.mean) < 1.96 * unpaired  # unpaired, the same difference would not be resolved
    with pytest.raises(ValueError, match="not the same examples"):
        compare.paired(a, b[:-1])


def _write(tmp_path, comp, method, arrays, unit="bits/dim", n_dims=784, falling=False):
    compare.write_examples(tmp_path / f"{comp}__{method}.npz", arrays,
                           {"comparison": comp, "method": method, "dataset": f"{comp}_data", "unit": unit,
                            "n_dims": n_dims, "convergence": {"still_falling": falling}, "lr": 1e-3})


def _verdicts(tmp_path):
    c = compare.claims(tmp_path)
    return {(r["claim"][:30], r["where"].split(":")[1].split("(")[0].strip()): r["verdict"] for _, r in c.iterrows()}


def test_claims_verdicts_follow_the_evidence(tmp_path):
    """Each verdict on constructed per-example estimates: holds, does not hold, not resolved (inside the noise, a
    run still falling, a run at the null model), and the soundness check fails a bound below the truth."""
    rng = np.random.default_rng(1)
    N, D = 500, 784
    truth = rng.normal(500, 20, N)
    null = truth + 100
    compare.write_reference(tmp_path / "mnist_16__reference.npz", "mnist_16", "mnist_16_data", "bits/dim", D,
                            null, truth, "independent")
    noise = lambda s: rng.normal(0, s, N)  # noqa: E731
    # discretised clearly better than continuous; its step curve falls; continuous's rises at the end
    _write(tmp_path, "mnist_16", "bfn_discretised", {10.0: truth + 40 + noise(1), 100.0: truth + 20 + noise(1),
                                                    math.inf: truth + 10 + noise(1)})
    _write(tmp_path, "mnist_16", "bfn_continuous", {10.0: truth + 50 + noise(1), 100.0: truth + 30 + noise(1),
                                                   math.inf: truth + 35 + noise(1)})
    v = _verdicts(tmp_path)
    assert v[("at 16 bins the discretised BFN", "bfn_discretised")] == "holds"
    assert v[("the BFN bound does not increas", "bfn_discretised")] == "holds"
    assert v[("the BFN bound does not increas", "bfn_continuous")] == "does not hold"
    assert v[("no method's bound lies below t", "bfn_discretised")] == "holds"
    # reversed: does not hold
    _write(tmp_path, "mnist_16", "bfn_continuous", {math.inf: truth + 5 + noise(1)})
    assert _verdicts(tmp_path)[("at 16 bins the discretised BFN", "bfn_discretised")] == "does not hold"
    # inside the noise: not resolved
    _write(tmp_path, "mnist_16", "bfn_continuous", {math.inf: truth + 10 + noise(30)})
    assert _verdicts(tmp_path)[("at 16 bins the discretised BFN", "bfn_discretised")].startswith("not resolved")
    # a clear difference, but one run still falling: no ranking
    _write(tmp_path, "mnist_16", "bfn_continuous", {math.inf: truth + 50 + noise(1)}, falling=True)
    verdict = _verdicts(tmp_path)[("at 16 bins the discretised BFN", "bfn_discretised")]
    assert verdict.startswith("not resolved") and "still falling" in verdict
    # a run no better than the null model: no ranking either, and its cell carries the mark
    _write(tmp_path, "mnist_16", "bfn_continuous", {math.inf: null + 1 + noise(1)})
    verdict = _verdicts(tmp_path)[("at 16 bins the discretised BFN", "bfn_discretised")]
    assert "null model" in verdict
    cells = compare.cells(tmp_path)
    cont = cells[cells["method"] == "bfn_continuous"].iloc[0]
    assert compare.AT_NULL in cont["marks"] and not cont["beats_null"]
    assert cont["gap"] == pytest.approx(units.nats_to((null + 1 - truth).mean(), "bits/dim", D), abs=1e-3)
    # soundness negative control: a "bound" below the truth
    _write(tmp_path, "mnist_16", "bfn_continuous", {math.inf: truth - 2 + noise(1)})
    assert _verdicts(tmp_path)[("no method's bound lies below t", "bfn_continuous")] == "does not hold"


def test_sohl_K_claim(tmp_path):
    D = 20
    K_nats = -units.to_nats(-2.414, "bits", D)  # K = -2.414 bits -> NLL 2.414 bits
    rng = np.random.default_rng(2)
    _write(tmp_path, "heartbeat", "sohl_binomial", {2000.0: K_nats + rng.normal(0, 0.01, 1000)}, unit="bits/seq",
           n_dims=D)
    assert _verdicts(tmp_path)[("binary heartbeat: K = -2.414 b", "sohl_binomial")] == "holds"
    _write(tmp_path, "heartbeat", "sohl_binomial", {2000.0: K_nats + units.to_nats(0.5, "bits", D)
                                                    + rng.normal(0, 0.01, 1000)}, unit="bits/seq", n_dims=D)
    assert _verdicts(tmp_path)[("binary heartbeat: K = -2.414 b", "sohl_binomial")] == "does not hold"
    # 0.08 bits off with a 0.05 s.e.: inside 0.1 at the point estimate, but the 95 % interval straddles it
    off = K_nats + units.to_nats(0.08, "bits", D)
    spread = units.to_nats(rng.normal(0, 0.05 * 1000**0.5, 1000), "bits", D)  # s.e. of the mean 0.05 bits
    _write(tmp_path, "heartbeat", "sohl_binomial", {2000.0: off + spread}, unit="bits/seq", n_dims=D)
    assert _verdicts(tmp_path)[("binary heartbeat: K = -2.414 b", "sohl_binomial")].startswith("not resolved")


def test_sohl_K_claim_names_a_published_K_above_the_datas_exact_K(tmp_path):
    """Every K is a lower bound on E log p: where the data's exact K (the truth) lies below published - tolerance,
    the verdict says the published value is unreachable on these data."""
    D = 2
    rng = np.random.default_rng(3)
    truth = units.to_nats(1.95, "bits", D) + rng.normal(0, 0.5, 1000)  # exact K -1.95 bits, as the bench's roll
    compare.write_reference(tmp_path / "swiss_roll__reference.npz", "swiss_roll", "swiss_roll", "bits", D,
                            truth + 3, truth, "quadrature")
    _write(tmp_path, "swiss_roll", "sohl_gaussian", {40.0: truth + 0.3 + rng.normal(0, 0.01, 1000)}, unit="bits",
           n_dims=D)
    c = compare.claims(tmp_path)
    row = c[c["claim"].str.startswith("swiss roll")].iloc[0]
    assert row["verdict"].startswith("does not hold") and "unreachable on these data" in row["verdict"]
    assert "exact K of these data -1.9" in row["evidence"]


def test_tables_carry_truth_row_gap_column_and_marks(tmp_path):
    """tables.write_all with the cells: the truth row, the gap column and the marks reach the published tables."""
    from suite import results, tables

    rng = np.random.default_rng(3)
    N, D = 200, 128
    truth = rng.normal(256, 5, N)
    compare.write_reference(tmp_path / "ex" / "text__reference.npz", "text", "text_hmm", "BPC", D, truth + 100,
                            truth, "independent")
    _write(tmp_path / "ex", "text", "bfn_discrete", {math.inf: truth + 30 + rng.normal(0, 1, N)}, unit="BPC",
           n_dims=D, falling=True)
    for e in ("text__bfn_discrete.npz",):
        p = tmp_path / "ex" / e
        meta, arr = compare.read_examples(p)
        meta["dataset"] = "text_hmm"
        compare.write_examples(p, arr, meta)
    compare.write_reference(tmp_path / "ex" / "text__reference.npz", "text", "text_hmm", "BPC", D, truth + 100,
                            truth, "independent")
    c = compare.cells(tmp_path / "ex")
    c["dataset"] = "text_hmm"
    v = units.nats_to(float((truth + 30).mean()), "BPC", D)
    rows = [results.make_row(method="bfn_discrete", dataset="text_hmm", split="test", metric="nll",
                             n_steps=math.inf, value=v, stderr=0.01, unit="BPC", bound="<=", n_dims=D),
            results.make_row(method="truth", dataset="text_hmm", split="test", metric="nll", n_steps=math.nan,
                             value=units.nats_to(float(truth.mean()), "BPC", D), stderr=0.005, unit="BPC", bound="=",
                             n_dims=D)]
    tables.write_all(pd.DataFrame(rows), tmp_path / "t", cells=c)
    md = (tmp_path / "t" / "tables.md").read_text()
    t4 = md.split("## BFN Table 4")[1].split("##")[0]
    assert "gap = bound - truth" in t4 and "truth: exact -ln p" in t4
    assert compare.FALLING in t4  # the still-falling mark on the BFN cell
    gap = units.nats_to(30.0, "BPC", D)
    assert f"| {gap:.3f} ± " in t4
