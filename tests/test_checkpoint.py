"""Checkpoint safety: loading a checkpoint runs no code, and a kill -9 at any point of a write loses nothing.

The kill tests run real `python -m suite.cli train` processes that SIGKILL themselves at a named point of
`checkpoint.save` (the `BFNBENCH_TEST_KILL_AT=point@step` hook), all at once, then resume each in this
process and compare its final weights, bit for bit, with an uninterrupted run.
"""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from suite import checkpoint
from suite.config import RunConfig, load_config
from suite.train import train
from tests.helpers.toy_method import Gauss  # noqa: F401  registers _test_blob, _test_gauss

REPO = Path(__file__).resolve().parent.parent

# a tiny real run: 10 steps, checkpoints at steps 5 and 10
TINY = ["method=bfn_discrete", "dataset=binary_heartbeat", "backbone=mlp", "backbone_kwargs.width=16",
        "backbone_kwargs.depth=1", "batch_size=8", "max_steps=10", "ckpt_every=5", "val_every=5", "log_every=5",
        "val_examples=16", "device=cpu", "amp=none", "seed=0", "name=run"]


def _tiny(out_dir) -> RunConfig:
    return load_config(None, TINY + [f"out_dir={out_dir}"])


def _weights(run_dir):
    return load_file(str(checkpoint.latest(run_dir) / "weights.safetensors"))


def _hidden(run_dir):
    return sorted(p.name for p in Path(run_dir).iterdir() if p.name.startswith("."))


def _visible_ckpts(run_dir):
    assert Path(run_dir).is_dir(), run_dir
    return sorted(p.name for p in Path(run_dir).glob("ckpt-*"))


class _Payload:
    """A pickle that, when loaded without weights_only, creates `marker` (standing for any code at all)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_malicious(path: Path, marker: Path, fmt: str) -> None:
    obj = {"optimizer": None, "step": 5, "config": _Payload(marker)}
    if fmt == "torch_zip":
        torch.save(obj, path)
    else:  # a bare pickle stream, which torch.load also accepts (the legacy format)
        path.write_bytes(pickle.dumps(obj, protocol=2))


def _toy_run(tmp_path, **kw):
    base = dict(name="r", method="_test_gauss", dataset="_test_blob", backbone="none", batch_size=8, max_steps=5,
                lr=0.05, ckpt_every=5, val_every=5, log_every=5, out_dir=str(tmp_path), seed=3)
    base.update(kw)
    return train(RunConfig(**base).validate(), progress=False)


# ---------------------------------------------------------------- nothing executed


@pytest.mark.parametrize("fmt", ["torch_zip", "bare_pickle"])
def test_malicious_state_is_refused_and_runs_nothing(tmp_path, fmt):
    """A state.pt whose pickle calls `open(marker, "w")` on load: the payload does run under the old
    `weights_only=False` (so the test is not vacuous), and load_state refuses it, naming the file, with
    no marker created."""
    run = _toy_run(tmp_path)
    state = checkpoint.latest(run) / "state.pt"
    proof, marker = tmp_path / "proof", tmp_path / "marker"
    _write_malicious(tmp_path / "proof.pt", proof, fmt)
    with open(tmp_path / "proof.pt", "rb") as f:  # the payload works when unpickled freely
        torch.load(f, weights_only=False) if fmt == "torch_zip" else pickle.load(f)  # noqa: S301
    assert proof.exists()

    _write_malicious(state, marker, fmt)
    with pytest.raises(checkpoint.CheckpointError, match="refused unread") as err:
        checkpoint.load_state(run)
    assert str(state) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_committed_ci_checkpoints_load_as_plain_data():
    """The committed tiny checkpoints (results/reference/ci_checkpoints) load under weights_only=True."""
    dirs = sorted((REPO / "results" / "reference" / "ci_checkpoints").glob("*/state.pt"))
    assert dirs
    for f in dirs:
        state = checkpoint.load_state(f.parent)
        assert {"step", "rng", "config", "history"} <= state.keys(), f


def _spec():
    from suite.data.base import DataSpec

    return DataSpec("_test_blob", "continuous", (3,))


def test_save_refuses_non_plain_state_before_writing(tmp_path):
    """What weights_only=True could not read back is refused at save time, before anything is written."""
    import datetime

    run = _toy_run(tmp_path)
    before = _visible_ckpts(run)
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.config\.when is a datetime\.date"):
        checkpoint.save(run, 7, Gauss(_spec()), None, None, {"config": {"when": datetime.date(2024, 1, 1)}})
    assert _visible_ckpts(run) == before and not _hidden(run)


# ---------------------------------------------------------------- nothing lost (in process)


def test_same_step_resave_replaces_without_a_gap(tmp_path):
    """Saving a step that already has a checkpoint replaces it: one complete copy, no aside copy left."""
    run = _toy_run(tmp_path)
    method = Gauss(_spec())
    with torch.no_grad():
        method.mu.fill_(7.0)
    checkpoint.save(run, 5, method, None, None, {"epoch": 0})
    assert _visible_ckpts(run) == ["ckpt-00000005"] and not _hidden(run)
    assert torch.equal(_weights(run)["model.mu"], torch.full((3,), 7.0))


def test_resuming_a_finished_run_rewrites_nothing(tmp_path, capsys):
    run = _toy_run(tmp_path)
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    cfg = RunConfig(name="r", method="_test_gauss", dataset="_test_blob", backbone="none", batch_size=8, max_steps=5,
                    lr=0.05, ckpt_every=5, val_every=5, log_every=5, out_dir=str(tmp_path), seed=3)
    capsys.readouterr()
    assert train(cfg, resume=True, progress=False) == run
    assert "already finished" in capsys.readouterr().err
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == files


def test_stale_temporary_folder_is_cleaned_by_the_next_run(tmp_path):
    """A hidden .ckpt-* folder of a killed write (here made by hand) is deleted when training starts."""
    run = tmp_path / "r"
    (run / ".ckpt-00000005.tmp-dead").mkdir(parents=True)
    (run / ".ckpt-00000005.tmp-dead" / "weights.safetensors").write_bytes(b"half")
    _toy_run(tmp_path)
    assert not _hidden(run) and _visible_ckpts(run) == ["ckpt-00000005"]


# ---------------------------------------------------------------- nothing lost (kill -9)

# id -> (kill point; right after the kill: visible checkpoints, `latest`'s text, hidden folders' name prefixes)
KILLS = {
    "after_weights": ("after_weights@10", ["ckpt-00000005"], "ckpt-00000005", [".ckpt-00000010.tmp-"]),
    "after_rename": ("after_rename@10", ["ckpt-00000005", "ckpt-00000010"], "ckpt-00000005", []),
    "after_latest": ("after_latest@10", ["ckpt-00000005", "ckpt-00000010"], "ckpt-00000010", []),
    "first_save_before_latest": ("after_rename@5", ["ckpt-00000005"], None, []),
}


def _cli(out_dir, *extra, kill=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop(checkpoint.KILL_ENV, None)
    if kill:
        env[checkpoint.KILL_ENV] = kill
    return subprocess.Popen([sys.executable, "-m", "suite.cli", "train", *TINY, f"out_dir={out_dir}", "--quiet",
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Every kill scenario at once (the processes run in parallel), plus an uninterrupted reference run."""
    import shutil

    root = tmp_path_factory.mktemp("kills")
    finished = train(_tiny(root / "finished"), progress=False)  # for the finished-run scenarios below
    procs = {k: _cli(root / k, kill=spec) for k, (spec, *_rest) in KILLS.items()}
    # a same-step re-save of a finished run killed after the old copy was moved aside
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", checkpoint.KILL_ENV: "after_aside"}
    script = ("import sys; from suite import checkpoint; from suite.config import RunConfig, apply; "
              "from suite.train import build; run = sys.argv[1]; state = checkpoint.load_state(run); "
              "cfg = apply(RunConfig(), state['config']); m, _ = build(cfg); "
              "checkpoint.load_weights(run, m, use_ema=False); e, _ = build(cfg); checkpoint.load_weights(run, e); "
              "extra = {k: v for k, v in state.items() if k not in ('optimizer', 'step')}; "
              "checkpoint.save(run, state['step'], m, e, None, extra)")
    shutil.copytree(finished, root / "after_aside" / "run")
    procs["after_aside"] = subprocess.Popen([sys.executable, "-c", script, str(root / "after_aside" / "run")], cwd=REPO,
                                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the case: `train --resume` of a finished run, with a kill armed at every save of step 10
    shutil.copytree(finished, root / "resume_finished" / "run")
    procs["resume_finished"] = _cli(root / "resume_finished", "--resume", kill="after_weights@10")
    reference = train(_tiny(root / "reference"), progress=False)
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[k] = (p.returncode, stdout, stderr, root / k / "run")
    return {"runs": out, "reference": _weights(reference), "finished": _weights(finished), "root": root}


@pytest.mark.parametrize("case", list(KILLS))
def test_kill_during_checkpoint_write_loses_nothing(killed, case):
    """kill -9 at a point of the step-10 (or first) save: a complete checkpoint is found, --resume recovers
    and reaches the uninterrupted run's weights bit for bit, and no hidden .ckpt-* folder stays."""
    rc, _, stderr, run = killed["runs"][case]
    _, visible, latest_text, hidden = KILLS[case]
    assert rc == -signal.SIGKILL, stderr
    assert _visible_ckpts(run) == visible
    ptr = run / "latest"
    assert (ptr.read_text().strip() if ptr.exists() else None) == latest_text
    left = _hidden(run)
    assert len(left) == len(hidden) and all(h.startswith(w) for h, w in zip(left, hidden, strict=True)), left
    assert checkpoint.latest(run).name == visible[-1]  # the newest complete checkpoint, whatever `latest` says

    train(_tiny(run.parent), resume=True, progress=False)
    assert _visible_ckpts(run) == ["ckpt-00000010"] and not _hidden(run)
    assert (run / "latest").read_text().strip() == "ckpt-00000010"
    got, want = _weights(run), killed["reference"]
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_kill_during_same_step_resave_keeps_the_old_copy(killed):
    """Killed between moving the old ckpt-10 aside and renaming the new one in: the aside copy is found,
    is loadable at once (eval needs no repair), and the next run puts it back."""
    rc, _, stderr, run = killed["runs"]["after_aside"]
    assert rc == -signal.SIGKILL, stderr
    assert _visible_ckpts(run) == []  # the moment the old code had no checkpoint at all
    found = checkpoint.latest(run)
    assert found.name.startswith(".ckpt-00000010.old-")
    assert checkpoint.load_state(run)["step"] == 10
    train(_tiny(run.parent), resume=True, progress=False)  # finished: repairs the folder, trains nothing
    assert _visible_ckpts(run) == ["ckpt-00000010"] and not _hidden(run)
    got = _weights(run)
    for k, v in killed["finished"].items():
        assert torch.equal(got[k], v), k


def test_resume_of_finished_run_is_a_noop_even_with_a_kill_armed(killed):
    """The issue's case: `train --resume` of a finished run no longer re-saves (so nothing can be lost):
    the armed kill never fires, the process says so and exits 0, the checkpoint is unchanged."""
    rc, stdout, stderr, run = killed["runs"]["resume_finished"]
    assert rc == 0, stderr
    assert "already finished" in stderr and "checkpoints in" in stdout
    assert _visible_ckpts(run) == ["ckpt-00000010"] and not _hidden(run)
    got = _weights(run)
    for k, v in killed["finished"].items():
        assert torch.equal(got[k], v), k
