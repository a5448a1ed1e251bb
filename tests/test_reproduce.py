"""`bfnbench reproduce` (suite/reproduce.py): the reference protocol's estimator (official test.py), the budget
planner, and one end-to-end run on the small official MNIST checkpoint (CPU, a few test images)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from suite.cli import main
from suite.reproduce import BATCH, Plan, plan, reproduce, run_cell, write
from tests.data_writers import write_mnist
from tests.helpers.official import REF

need_ref = pytest.mark.skipif(not (REF / "small/mnist_discrete.pt").is_file(), reason=f"official reference files not at {REF}")


class _PassConstant(torch.nn.Module):
    """nll = c_r for every example of pass r (pass = repeat), so pass means are known exactly."""

    def __init__(self, values):
        super().__init__()
        self.values, self.calls, self.seen = list(values), 0, 0

    def nll(self, x, n):
        return torch.full((x.shape[0],), float(self.values[self.pass_index]))


class _Data:
    def __init__(self, n, method):
        self.n, self.method = n, method

    def batches(self, split, bs, *, epoch, **kw):
        self.method.pass_index = epoch
        for i in range(0, self.n, bs):
            yield torch.zeros(min(bs, self.n - i), 1)


def test_reference_estimator_is_official_test_py():
    """value = mean of pass means; s.e. = std(correction=0) / sqrt(R), as torch's std(correction=0) in test.py."""
    vals = [1.0, 2.0, 4.0, 7.0]
    m = _PassConstant(vals)
    res = run_cell(m, _Data(250, m), 10, Plan(4, 250), "reference", seed=0, device="cpu")
    assert res["value_nats"] == pytest.approx(np.mean(vals))
    assert res["stderr_nats"] == pytest.approx(torch.tensor(vals).std(correction=0).item() / 2)
    assert res["n_examples"] == 250 and res["n_repeats"] == 4
    # the suite protocol: s.e. over the two group means (passes 0-1, 2-3)
    res = run_cell(m, _Data(250, m), 10, Plan(4, 250), "suite", seed=0, device="cpu")
    g = np.array([1.5, 5.5])
    assert res["stderr_nats"] == pytest.approx(g.std(ddof=1) / math.sqrt(2))


def test_budget_cuts_repeats_then_examples():
    p = plan("reference", "mnist_discrete", 10_000, 0.1, None, None, None)
    assert (p.repeats, p.examples, p.note) == (2000, 10_000, "")
    p = plan("reference", "mnist_discrete", 10_000, 0.1, None, 100.0, None)  # 10 s a pass
    assert (p.repeats, p.examples) == (10, 10_000) and "cut from 2000 to 10" in p.note
    p = plan("reference", "cifar10_discretized_256bins", 10_000, 0.1, None, 5.0, None)
    assert (p.repeats, p.examples) == (1, 50 * BATCH) and "examples to the first 5000" in p.note
    p = plan("suite", "text8_discrete", 19_531, 0.1, 5, None, None)
    assert p.repeats == 6  # two groups of equal size
    assert plan("reference", "text8_discrete", 4_999_744, 1.0, None, None, None).repeats == 1


def test_cli_without_checkpoints_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    assert main(["reproduce", "--checkpoints", str(tmp_path / "ck"), "--tables", "4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr()
    assert "no checkpoint for text8_discrete" in err.out and "text8_ema.pt" in err.out
    assert err.err.startswith("bfnbench: error: reproduce: no checkpoint") and "Traceback" not in err.err
    assert main(["reproduce", "--checkpoints", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2


@need_ref
def test_end_to_end_on_the_small_mnist_checkpoint(tmp_path):
    """Table 2 cells n = 10 and inf from the small official-format checkpoint on 10 test images: finite, beside
    the published numbers, reproducible from the seed, written as CSV and markdown."""
    write_mnist(tmp_path / "data/mnist", n_train=100, n_test=12)
    kw = dict(tables=[2], repeats=3, max_examples=10, steps=[10, math.inf], progress=False, log=lambda s: None,
              data_options=dict(strict_sizes=False), device="cpu")  # fmt: skip
    rows = reproduce(REF / "small", tmp_path / "data", **kw)
    assert [r["n_steps"] for r in rows] == [10, math.inf]
    assert [r["paper"] for r in rows] == [95.21, 77.87]
    for r in rows:
        assert math.isfinite(r["value"]) and r["stderr"] > 0 and r["unit"] == "nats/image"
        assert r["n_repeats"] == 3 and r["n_examples"] == 10 and "reference (official test.py)" in r["protocol"]
        assert "first 10 of 12" in r["protocol"]
        assert r["quirks"] == "categorical_floor+flow_t_clamp+sender_samples"  # the discrete BFN's, all three
    again = reproduce(REF / "small", tmp_path / "data", **kw)
    assert [r["value"] for r in again] == [r["value"] for r in rows]
    csv, md = write(rows, tmp_path / "out")
    assert "## Table 2" in md.read_text() and "95.21" in md.read_text() and csv.is_file()
    header = [c.strip() for c in md.read_text().split("## Table 2")[1].strip().splitlines()[0].strip("|").split("|")]
    assert header[-2:] == ["protocol", "quirks"] and "quirks" in csv.read_text().splitlines()[0]
    # the same cells as the suite's tidy rows (results.make_row), readable by results.load_results
    from suite import results

    tidy = results.load_results(tmp_path / "out" / "runs")
    assert list(tidy["value"]) == [r["value"] for r in rows] and set(tidy["metric"]) == {"nll"}
    assert list(tidy["dataset"]) == ["binarized_mnist"] * 2 and list(tidy["n_steps"]) == [10, math.inf]


@need_ref
def test_discrete_cells_record_their_quirks_per_protocol(tmp_path):
    """The MNIST cells: the suite protocol the exact computation ("none"); a Gaussian-flow-only name is left out
    of a discrete cell (no error); one discrete quirk by name is recorded and changes the value."""
    write_mnist(tmp_path / "data/mnist", n_train=20, n_test=4)
    kw = dict(tables=[2], repeats=2, max_examples=2, steps=[10], progress=False, log=lambda s: None,
              data_options=dict(strict_sizes=False), device="cpu")  # fmt: skip
    suite = reproduce(REF / "small", tmp_path / "data", protocol="suite", **kw)
    assert [r["quirks"] for r in suite] == ["none"]
    other = reproduce(REF / "small", tmp_path / "data", quirks=("recon_fallback",), **kw)
    assert [r["quirks"] for r in other] == ["none"]
    samples = reproduce(REF / "small", tmp_path / "data", quirks=("sender_samples", "bin_floor"), **kw)
    assert [r["quirks"] for r in samples] == ["sender_samples"]
    assert samples[0]["value"] != other[0]["value"]


def test_cell_quirks_per_method():
    from suite.reproduce import cell_quirks

    assert cell_quirks("bfn_discrete", "reference") == "official" and cell_quirks("bfn_discrete", "suite") == ()
    names = ("recon_fallback", "categorical_floor", "sender_samples")
    assert cell_quirks("bfn_discrete", "reference", names) == ("categorical_floor", "sender_samples")
    assert cell_quirks("bfn_discretised", "suite", names) == ("recon_fallback", "categorical_floor")
    assert cell_quirks("bfn_continuous", "suite", "official") == ("official",)
    assert cell_quirks("bfn_discrete", "suite", ["floor"]) == ("floor",)  # unknown: the method's error names it


def test_default_quirks_per_protocol():
    """The reference protocol reproduces every official-code quirk by default, the suite protocol none."""
    from suite.reproduce import default_quirks

    assert default_quirks("reference") == "official" and default_quirks("suite") == ()


@pytest.mark.parametrize("flag, passed", [(None, None), (["none"], ()), (["official"], ("official",)),
                                          (["recon_fallback", "bin_floor"], ("recon_fallback", "bin_floor"))])
def test_cli_quirks_flag_reaches_reproduce(tmp_path, monkeypatch, flag, passed):
    """`bfnbench reproduce --quirks ...`: absent = the protocol's default (None), 'none' = the exact computation."""
    import suite.reproduce as rp

    seen = {}
    monkeypatch.setattr(rp, "reproduce", lambda *a, **kw: seen.update(kw) or [])
    monkeypatch.setattr(rp, "write", lambda rows, out: (out / "cells.csv", _touch(out / "tables.md")))
    argv = ["reproduce", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv + (["--quirks", *flag] if flag else [])) == 0
    assert seen["quirks"] == passed


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path
