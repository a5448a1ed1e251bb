"""Likelihood regression (suite/regression.py): the committed tiny models reproduce their references within
bands that `bfnbench regress refresh` measured, a user's own run can be gated the same way, and a real change
(a wrong bound term, a changed default hyperparameter) leaves its band.
"""

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from suite import checkpoint, cli, methods
from suite import regression as rg


def _moved(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["moved"]]


def _assert_none_moved(table: pd.DataFrame):
    assert not table.empty
    moved = _moved(table)
    assert moved.empty, "likelihoods moved beyond their bands:\n" + moved.to_string()


@pytest.fixture(scope="module")
def reference():
    return rg.load_reference()


def test_every_case_has_a_checkpoint_and_both_guarantees_with_provenance(reference):
    for m in rg.CASES:
        assert (rg.CKPT_DIR / m.name / "weights.safetensors").stat().st_size < 2_000_000, m.name
        for kind in ("checkpoint", "retrain"):
            rows = reference[(reference["case"] == m.name) & (reference["kind"] == kind)]
            assert len(rows) == len(m.n_steps), (m.name, kind)
            assert (rows["band"] > 0).all() and np.isfinite(rows["spread"]).all()
    ck = reference[reference["kind"] == "checkpoint"]
    assert (ck["n_variants"] >= 6).all()  # threads 1, 2, 4 x both k-hat kernels at the least
    assert (reference[reference["kind"] == "retrain"]["n_variants"] >= 3).all()
    for col in ("cpu_model", "torch_version", "numba_version", "threads", "isa", "made_at", "git_sha"):
        assert reference[col].notna().all() and (reference[col].astype(str) != "").all(), col


def test_committed_checkpoints_reproduce_their_nll(reference):
    """Guarantee 'checkpoint': deterministic evaluation, band from the measured float32 spread."""
    _assert_none_moved(rg.check(rg.REF_CSV, "checkpoint"))


def test_checkpoint_band_covers_this_machine_at_two_threads_with_the_torch_kernels(reference, monkeypatch):
    """The band was measured on the reference machine; here, on whatever CPU CI has, the evaluation at 2 threads
    with the torch k-hat routes (BFNBENCH_NUMBA=0) must stay inside it too."""
    monkeypatch.setenv("BFNBENCH_NUMBA", "0")
    ref = reference[reference["kind"] == "checkpoint"]
    new = rg.measure(rg.cases_of(ref), rg.REFERENCE_DIR, "checkpoint", n_threads=2)
    _assert_none_moved(rg.compare(ref, new))


def test_retraining_from_seed_reproduces_its_nll(reference):
    """Guarantee 'retrain': band = prediction interval from the measured seed-to-seed spread of training."""
    _assert_none_moved(rg.check(rg.REF_CSV, "retrain"))


def _zero_recon(self, x):
    return torch.zeros(x.shape[0], device=x.device)


def _nstep_off_by_one(orig):
    @functools.wraps(orig)
    def wrong(self, x, i, n):  # the n-step sum's factor taken as (n - 1) where the bound has n (MATH.md s.2)
        return orig(self, x, i, n) * (n - 1) / n
    return wrong


@pytest.mark.parametrize("case, attr, patch, rows", [
    ("bfn_discrete_heartbeat", "recon", lambda orig: _zero_recon, {"10", "inf"}),
    ("bfn_discrete_text", "loss_nstep", _nstep_off_by_one, {"10"}),
    ("bfn_continuous_swiss_roll", "recon", lambda orig: _zero_recon, {"10", "inf"}),
], ids=["bfn-discrete-no-reconstruction", "bfn-discrete-text-nstep-off-by-one", "bfn-continuous-no-reconstruction"])
def test_a_wrong_bound_term_is_caught(reference, monkeypatch, case, attr, patch, rows):
    """Negative control of guarantee 'checkpoint': a deliberately wrong term moves the rows it touches out of
    their bands, and only those."""
    from suite.bfn.continuous import ContinuousBFN
    from suite.bfn.discrete import DiscreteBFN

    cls = ContinuousBFN if "continuous" in case else DiscreteBFN
    monkeypatch.setattr(cls, attr, patch(getattr(cls, attr)))
    table = rg.check(rg.REF_CSV, "checkpoint", [case])
    assert set(_moved(table)["n_steps"]) == rows, table.to_string()


def test_a_changed_default_hyperparameter_is_caught(reference, monkeypatch):
    """Negative control of guarantee 'retrain': multinomial diffusion's default noise schedule changed from the
    cosine to the linear one (a one-word change in its factory) moves both retrained rows out of their bands
    (measured: -0.46 and +0.84 nats against bands of 0.21 and 0.20)."""
    orig = methods._METHODS["multinomial_diffusion"]
    monkeypatch.setitem(methods._METHODS, "multinomial_diffusion", functools.partial(orig, schedule="linear"))
    table = rg.check(rg.REF_CSV, "retrain", ["multinomial_text"])
    assert set(_moved(table)["n_steps"]) == {"10", "inf"}, table.to_string()


def test_compare_uses_each_rows_band_and_flags_missing_rows():
    ref = pd.DataFrame([{"case": "a", "kind": "checkpoint", "n_steps": "inf", "value": 10.0, "band": 0.1},
                        {"case": "a", "kind": "retrain", "n_steps": "inf", "value": 10.0, "band": 1.0}])
    new = ref.drop(columns="band").assign(value=10.5, stderr=0.0)
    moved = rg.compare(ref, new).set_index("guarantee")["moved"]
    assert bool(moved["checkpoint"]) and not bool(moved["retrain"])
    same = new.assign(value=10.0)
    assert rg.compare(ref, same)["moved"].sum() == 0
    assert rg.compare(ref, same.iloc[:1]).set_index("guarantee")["moved"].to_dict() == {
        "checkpoint": False, "retrain": True}  # the retrain row has no new value
    assert rg.compare(ref, new.assign(value=float("nan")))["moved"].all()  # a NaN never passes


def test_retrain_band_is_a_prediction_interval_with_its_stated_false_alarm_rate():
    """t(N-1; 1-a/2) sqrt(1 + 1/N) sd around the mean of N draws holds one more draw with probability 1 - a:
    Monte Carlo over 40,000 sets of 9 normal draws at a = 0.05 (binomial s.e. 0.0011)."""
    g = np.random.default_rng(0)
    n, alpha, trials = 8, 0.05, 40_000
    x = g.normal(3.0, 2.0, size=(trials, n + 1))
    ref, new = x[:, :n], x[:, n]
    band = np.array([rg.retrain_band(s, n, alpha) for s in ref.std(axis=1, ddof=1)])
    rate = float(np.mean(np.abs(new - ref.mean(axis=1)) > band))
    assert abs(rate - alpha) < 4 * (alpha * (1 - alpha) / trials) ** 0.5, rate


def test_checkpoint_band_floor():
    assert rg.checkpoint_band(100.0, 0.0) == pytest.approx(rg.CKPT_REL_FLOOR * 100.0)
    assert rg.checkpoint_band(100.0, 1.0) == pytest.approx(rg.CKPT_FACTOR)


def test_a_users_own_run_is_recorded_checked_and_caught(tmp_path, capsys):
    """The workflow of README's 'your own models in CI': train, record a reference (bands measured here, both
    guarantees), check and retrain pass; corrupting the checkpoint's weights fails `check` with exit 1."""
    runs, ref = tmp_path / "runs", tmp_path / "ci" / "likelihoods.csv"
    assert cli.main(["train", "method=bfn_discrete", "dataset=binary_heartbeat", "backbone=mlp",
                     "backbone_kwargs.width=16", "backbone_kwargs.depth=1", "method_kwargs.beta1=3", "max_steps=40",
                     "batch_size=16", "val_every=40", "ckpt_every=40", "log_every=40", "device=cpu",
                     "name=mine", f"out_dir={runs}", "--quiet"]) == 0
    assert cli.main(["regress", "record", str(runs / "mine"), "--reference", str(ref), "--n-steps", "5", "inf",
                     "--repeats", "4", "--groups", "2", "--examples", "64", "--retrain-seeds", "3",
                     "--threads", "1", "2", "--kernels", "compiled", "--isa", "native"]) == 0
    table = rg.load_reference(ref)
    assert set(table["kind"]) == {"checkpoint", "retrain"} and set(table["n_steps"]) == {"5", "inf"}
    assert (table["source"] == "../runs/mine").all()  # relative: the reference travels with the repository
    capsys.readouterr()
    assert cli.main(["regress", "check", "--reference", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "made on" in out and "band" in out and "checkpoint" in out
    assert cli.main(["regress", "train", "--reference", str(ref)]) == 0

    w = checkpoint.latest(runs / "mine") / "weights.safetensors"
    tensors = load_file(str(w))
    with safe_open(str(w), framework="pt") as h:
        meta = h.metadata()
    key = next(k for k in tensors if k.startswith("ema.") and tensors[k].ndim == 2)
    tensors[key] = tensors[key] * 1.01  # a 1 % change of one weight matrix
    save_file(tensors, str(w), metadata=meta)
    assert cli.main(["regress", "check", "--reference", str(ref)]) == 1
