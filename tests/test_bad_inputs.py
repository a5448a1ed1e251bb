"""The catalogue of bad inputs: each gets one clear line on stderr, a non-zero exit, no traceback, and
nothing lost or half-done. Every case writes its own bad files, and runs `suite.cli.main` in process.

Simulations, where the real condition cannot be made here:
* read-only folders: the tests run as root, which ignores permission bits, and no read-only mount is
  at hand; so the probe file that `suite.config.check_writable` creates is made to fail with EROFS, as
  on a read-only file system. A folder whose path runs through a regular file is the real thing.
* disk full: `save_file` (weights) or `torch.save` (state) in suite/checkpoint.py raises ENOSPC.
* no GPU: `torch.cuda.is_available` returns False (so the case also holds on a machine with one).
"""

import errno
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from suite import checkpoint
from suite.cli import main
from tests.helpers.toy_method import Gauss  # noqa: F401  registers _test_blob, _test_gauss
from tests.test_checkpoint import _write_malicious


def toy(tmp_path, *extra, steps=10):
    """argv of a toy training run (a 3-d Gaussian: 64 train examples, 8 batches an epoch)."""
    return ["train", "name=r", "method=_test_gauss", "dataset=_test_blob", "backbone=none", "batch_size=8",
            f"max_steps={steps}", "lr=0.05", "ckpt_every=5", "val_every=5", "log_every=5", "seed=3", "device=cpu",
            f"out_dir={tmp_path / 'runs'}", "--quiet", *extra]


def trained(tmp_path, steps=5) -> Path:
    assert main(toy(tmp_path, steps=steps)) == 0
    return tmp_path / "runs" / "r"


def no_weights_anywhere(tmp_path):
    def check():
        assert not list(tmp_path.rglob("weights.safetensors"))
    return check


def absent(path):
    def check():
        assert not path.exists(), path
    return check


def no_hidden(run):
    return not [p for p in run.iterdir() if p.name.startswith(".")]


def read_only(monkeypatch):
    def refuse(folder):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(folder))

    monkeypatch.setattr("suite.config._probe", refuse)


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# -------------------------------------------------------------- configuration


@case
def malformed_yaml_override(tmp_path, mp):
    return toy(tmp_path, "betas=[0.9,0.99"), ["betas=[0.9,0.99", "not valid YAML", "close its brackets"], \
        no_weights_anywhere(tmp_path)


@case
def malformed_yaml_file(tmp_path, mp):
    f = tmp_path / "bad.yaml"
    f.write_text("method: _test_gauss\nbetas: [0.9, 0.99\nlr: 0.1\n")
    return ["train", str(f), "--quiet"], [str(f), "not valid YAML", "line 3"], None


@case
def device_cuda_without_gpu(tmp_path, mp):
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return toy(tmp_path, "device=cuda"), ["device='cuda'", "no GPU", "device=cpu"], no_weights_anywhere(tmp_path)


@case
def device_tpu(tmp_path, mp):
    return toy(tmp_path, "device=tpu"), ["device='tpu'", "auto, cpu, cuda, cuda:N"], no_weights_anywhere(tmp_path)


@case
def batch_size_larger_than_split(tmp_path, mp):
    return toy(tmp_path, "batch_size=100"), ["batch_size=100", "64 examples", "batch_size=64 or less"], \
        no_weights_anywhere(tmp_path)


@case
def unknown_method_kwargs_key(tmp_path, mp):
    argv = ["train", "method=bfn_discrete", "dataset=binary_heartbeat", "backbone=mlp", "method_kwargs.beta=3",
            f"out_dir={tmp_path / 'runs'}", "--quiet"]
    return argv, ["method_kwargs.beta", "no option 'beta'", "beta1, receiver, final"], no_weights_anywhere(tmp_path)


@case
def unknown_flag_between_overrides(tmp_path, mp):
    return ["train", "max_steps=1", "--bogus", "name=x"], ["unrecognized arguments: --bogus",
                                                            "bfnbench train --help"], None


@case
def override_swallowed_by_n_steps(tmp_path, mp):
    run = trained(tmp_path)
    return ["eval", str(run), "--n-steps", "10", "eval_repeats=2"], ["'eval_repeats=2'", "before --n-steps"], None


# -------------------------------------------------------------- training


@case
def divergence_before_first_checkpoint(tmp_path, mp):
    def after():
        assert not list((tmp_path / "runs" / "r").glob("ckpt-*"))
    return toy(tmp_path, "method_kwargs.poison_at=3"), \
        ["loss is nan at step 3", "no checkpoint was written before it", "nothing is kept"], after


@case
def divergence_after_a_checkpoint(tmp_path, mp):
    run = tmp_path / "runs" / "r"

    def after():
        assert checkpoint.load_state(run)["step"] == 10 and no_hidden(run)
    return toy(tmp_path, "method_kwargs.poison_at=12", steps=20), \
        ["loss is nan at step 12", f"the last good checkpoint {run / 'ckpt-00000010'} is kept"], after


@case
def out_dir_read_only(tmp_path, mp):
    read_only(mp)

    # refused before anything was made or trained
    return toy(tmp_path, f"out_dir={tmp_path / 'ro'}"), [f"out_dir='{tmp_path / 'ro'}'", "Read-only file system",
                                                         "is read-only", "choose another out_dir"], absent(tmp_path / "ro")


@case
def out_dir_is_a_file(tmp_path, mp):
    f = tmp_path / "runs"
    f.write_text("not a folder")
    def after():
        assert f.read_text() == "not a folder"  # left as it was
    return toy(tmp_path), [f"{f} is a file, not a folder", "choose another out_dir"], after


@case
def disk_full_writing_weights(tmp_path, mp):
    return _disk_full(tmp_path, mp, "save_file")


@case
def disk_full_writing_state(tmp_path, mp):
    return _disk_full(tmp_path, mp, "torch.save")


def _disk_full(tmp_path, mp, which):
    """The second checkpoint (step 10) cannot be written: the first (step 5) stays, and --resume works."""
    real = {"save_file": checkpoint.save_file, "torch.save": torch.save}[which]
    calls = []

    def full(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **kw)

    mp.setattr(checkpoint, "save_file", full) if which == "save_file" else mp.setattr(checkpoint.torch, "save", full)
    run = tmp_path / "runs" / "r"

    def after():
        assert checkpoint.latest(run).name == "ckpt-00000005" and checkpoint.load_state(run)["step"] == 5
        assert (run / "latest").read_text().strip() == "ckpt-00000005" and no_hidden(run)
        mp.undo()  # space freed: the run continues
        assert main(toy(tmp_path, "--resume")) == 0 and checkpoint.load_state(run)["step"] == 10
    return toy(tmp_path), ["writing checkpoint", "No space left on device",
                           f"the previous checkpoint {run / 'ckpt-00000005'} is intact", "--resume"], after


@case
def resume_of_evaluation_only_checkpoint(tmp_path, mp):
    """Like the committed CI checkpoints: optimizer state dropped; it evaluates but cannot be resumed."""
    run = trained(tmp_path)
    f = checkpoint.latest(run) / "state.pt"
    state = checkpoint.load_state(run)
    state["optimizer"] = None
    torch.save(state, f)
    return toy(tmp_path, "--resume", steps=20), [str(f), "no optimizer state", "without --resume"], None


# -------------------------------------------------------------- checkpoints


@case
def malicious_state_eval(tmp_path, mp):
    return _malicious(tmp_path, ["eval"])


@case
def malicious_state_resume(tmp_path, mp):
    return _malicious(tmp_path, None)


def _malicious(tmp_path, cmd):
    run = trained(tmp_path)
    f = checkpoint.latest(run) / "state.pt"
    marker = tmp_path / "marker"
    _write_malicious(f, marker, "torch_zip")
    argv = ["eval", str(run)] if cmd else toy(tmp_path, "--resume", steps=20)

    return argv, [str(f), "refused unread", "could run arbitrary code", "delete the checkpoint folder"], absent(marker)


@case
def eval_of_nan_weights(tmp_path, mp):
    run = trained(tmp_path)
    f = checkpoint.latest(run) / "weights.safetensors"
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(f)).items()}, str(f), metadata=meta)
    return ["eval", str(run)], [str(f), "NaN or infinite", "the run diverged", "retrain"], None


# -------------------------------------------------------------- outputs


def _no_eval(mp):
    def never(*a, **kw):
        raise AssertionError("the evaluation ran although its output folder cannot be written")

    mp.setattr("suite.evaluate.evaluate", never)


@case
def eval_out_read_only(tmp_path, mp):
    run = trained(tmp_path)
    _no_eval(mp)
    read_only(mp)
    return ["eval", str(run), "--out", str(tmp_path / "ro")], [f"eval --out {tmp_path / 'ro'}", "is read-only",
                                                              "pass --out DIR"], None


@case
def eval_out_is_a_file(tmp_path, mp):
    run = trained(tmp_path)
    _no_eval(mp)
    (tmp_path / "f").write_text("")
    return ["eval", str(run), "--out", str(tmp_path / "f" / "runs")], [f"{tmp_path / 'f'} is a file, not a folder"], \
        None


@case
def tables_on_empty_folder(tmp_path, mp):
    (tmp_path / "empty").mkdir()
    return ["tables", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "t")], \
        [f"no results in {tmp_path / 'empty'}", "bfnbench eval"], absent(tmp_path / "t")


@case
def plots_on_empty_folder(tmp_path, mp):
    (tmp_path / "empty").mkdir()
    return ["plots", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "p")], \
        [f"no results in {tmp_path / 'empty'}", "bfnbench bench"], absent(tmp_path / "p")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, needles, after = CASES[name](tmp_path, monkeypatch)
    capsys.readouterr()  # the set-up's own output
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse, and the `SystemExit("bfnbench: ...")` style
        rc = e.code
        if isinstance(rc, str):
            print(rc, file=sys.stderr)
            rc = 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("bfnbench: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    if after is not None:
        after()


def test_catalogue_covers_the_issue():
    """Every bad input the issue lists has its case here (the ids name them)."""
    wanted = {"malformed_yaml_override", "malformed_yaml_file", "device_cuda_without_gpu", "device_tpu",
              "batch_size_larger_than_split", "divergence_before_first_checkpoint", "eval_of_nan_weights",
              "out_dir_read_only", "eval_out_read_only", "disk_full_writing_weights", "out_dir_is_a_file",
              "unknown_method_kwargs_key", "unknown_flag_between_overrides", "tables_on_empty_folder",
              "plots_on_empty_folder", "malicious_state_eval", "malicious_state_resume"}
    assert wanted <= set(CASES)
