"""Likelihood regression: the committed tiny checkpoints and their retraining reproduce the references.

A move beyond 3 combined standard errors (or 1e-3 nats per example when those are tiny) fails; the
references change only through `bfnbench regress refresh`, which prints old beside new.
"""

import pandas as pd
import pytest

from suite import regression as rg


def _check(table: pd.DataFrame):
    moved = table[table["moved"]]
    assert moved.empty, "likelihoods moved:\n" + moved.to_string()


@pytest.fixture(scope="module")
def reference():
    return rg.load_reference()


def test_every_case_has_a_committed_checkpoint_and_reference(reference):
    for c in rg.CASES:
        assert (rg.CKPT_DIR / c.name / "weights.safetensors").is_file(), c.name
        assert (rg.CKPT_DIR / c.name / "weights.safetensors").stat().st_size < 2_000_000
        for kind in ("checkpoint", "retrain"):
            assert len(reference[(reference["case"] == c.name) & (reference["kind"] == kind)]) == len(c.n_steps)


def test_committed_checkpoints_reproduce_their_nll(reference):
    new = rg.run_checkpoints()
    _check(rg.compare(reference[reference["kind"] == "checkpoint"], new))


def test_retraining_from_seed_reproduces_its_nll(reference, tmp_path):
    new = rg.run_training(out_dir=tmp_path)
    _check(rg.compare(reference[reference["kind"] == "retrain"], new))


def test_compare_flags_a_move():
    """A shift of 4 standard errors is flagged, 2 is not; a missing case is flagged."""
    ref = pd.DataFrame([{"case": "a", "kind": "checkpoint", "n_steps": "inf", "value": 10.0, "stderr": 0.1}])
    for shift, flagged in ((2 * 0.1 * 2**0.5, False), (4 * 0.1 * 2**0.5, True)):
        new = ref.assign(value=10.0 + shift)
        assert bool(rg.compare(ref, new)["moved"].iloc[0]) is flagged
    assert rg.compare(ref, ref.iloc[:0])["moved"].all()
