"""Training loop, checkpoints and config: resume reaches the same result, NaN keeps the last checkpoint,
bad configs and foreign checkpoints get clear errors."""

import pytest
import torch

from suite import checkpoint
from suite.config import ConfigError, RunConfig, load_config
from suite.data.base import DataSpec
from suite.train import TrainingDiverged, train
from tests.helpers.toy_method import Gauss as _Gauss  # noqa: E402  registers _test_blob, _test_gauss


def _cfg(tmp_path, **kw):
    base = dict(name="r", method="_test_gauss", dataset="_test_blob", backbone="none", batch_size=8,
                max_steps=20, lr=0.05, ckpt_every=5, val_every=5, log_every=5, out_dir=str(tmp_path), seed=3)
    base.update(kw)
    return RunConfig(**base).validate()


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(checkpoint.latest(run_dir) / "weights.safetensors"))


def test_resume_matches_uninterrupted_run(tmp_path):
    """A run stopped at step 13 (mid-epoch: 8 batches per epoch) and resumed equals one run of 20 steps,
    bit for bit on CPU: data order, noise draws, optimizer and EMA all continue."""
    full = train(_cfg(tmp_path / "a"), progress=False)
    part = train(_cfg(tmp_path / "b", max_steps=13, ckpt_every=13), progress=False)
    assert checkpoint.load_state(part)["step"] == 13
    resumed = train(_cfg(tmp_path / "b"), resume=True, progress=False)
    wa, wb = _weights(full), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # the stopped run also logged its own last step (13); every other record is identical
    resumed_hist = [h for h in checkpoint.load_state(resumed)["history"] if h["step"] != 13]
    assert checkpoint.load_state(full)["history"] == resumed_hist


def test_training_reduces_loss_and_keeps_one_checkpoint(tmp_path):
    run = train(_cfg(tmp_path, max_steps=60, ema_decay=0.8), progress=False)
    hist = checkpoint.load_state(run)["history"]
    vals = [h["val_loss_ema"] for h in hist if "val_loss_ema" in h]
    assert vals[-1] < vals[0] - 1.0
    assert len(list(run.glob("ckpt-*"))) == 1 and (run / "config.json").is_file()


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(_cfg(tmp_path, method_kwargs={"poison_at": 12}), progress=False)
    run = tmp_path / "r"
    assert checkpoint.load_state(run)["step"] == 10  # the checkpoint before the NaN, intact
    assert not list(run.glob(".ckpt-*"))  # no half-written checkpoint


def test_existing_run_needs_resume(tmp_path):
    train(_cfg(tmp_path, max_steps=5), progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="--resume"):
        train(_cfg(tmp_path, max_steps=5), progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        train(_cfg(tmp_path, name="other"), resume=True, progress=False)


def test_foreign_checkpoint_refused(tmp_path):
    run = train(_cfg(tmp_path, max_steps=5), progress=False)
    other = _Gauss(DataSpec("_test_blob", "continuous", (4,)))
    with pytest.raises(checkpoint.CheckpointError, match="another method or data shape"):
        checkpoint.load_weights(run, other)
    (checkpoint.latest(run) / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_weights(run, _Gauss(DataSpec("_test_blob", "continuous", (3,))))


@pytest.mark.parametrize(
    "override, match",
    [
        ("batch_size=0", "batch_size"),
        ("lr=-1", "lr"),
        ("train_n_steps=0", "train_n_steps"),
        ("eval_n_steps=[10,0]", "eval_n_steps"),
        ("amp=fp8", "amp"),
        ("colour=red", "unknown config key"),
        ("max_steps=1.5", "expected int"),
        ("lr.x=1", "not a dict"),
    ],
)
def test_impossible_config_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: bfn_discrete\nbatch_size: 16\nmethod_kwargs: {beta1: 3.0}\n")
    cfg = load_config(f, ["batch_size=8", "method_kwargs.t_min=1e-6", "eval_n_steps=[10,100,inf]", "betas=[0.9,0.98]"])
    assert cfg.batch_size == 8 and cfg.method_kwargs == {"beta1": 3.0, "t_min": 1e-6}
    assert cfg.eval_n_steps == [10, 100, None] and cfg.betas == [0.9, 0.98]


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    """A step that leaves an infinite weight while the loss it came from was finite (injected after step 3's
    update): the checkpoint due at that step is refused; the step-2 one is named as kept."""
    import suite.train as tr

    real, calls = tr.ema_update, []

    def update(ema, model, decay):
        real(ema, model, decay)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                model.mu.fill_(float("inf"))

    monkeypatch.setattr(tr, "ema_update", update)
    with pytest.raises(TrainingDiverged, match=r"weights hold NaN or infinite values after step 3; the last good "
                                               r"checkpoint .*ckpt-00000002 is kept"):
        train(_cfg(tmp_path, ckpt_every=1), progress=False)
    assert [p.name for p in (tmp_path / "r").glob("*ckpt-*")] == ["ckpt-00000002"]
    assert checkpoint.load_state(tmp_path / "r")["step"] == 2


def test_unknown_method_kwargs_lists_the_valid_names():
    from suite.train import build

    with pytest.raises(ConfigError, match=r"method_kwargs\.poison: method '_test_gauss' has no option 'poison'; "
                                          r"its options: poison_at, noise"):
        build(RunConfig(method="_test_gauss", dataset="_test_blob", backbone="none", method_kwargs={"poison": 1}))


def test_kill_point_hook_is_inert_for_other_points_and_steps(tmp_path, monkeypatch):
    """BFNBENCH_TEST_KILL_AT fires only at its own point and step (the kill tests rely on that)."""
    monkeypatch.setenv(checkpoint.KILL_ENV, "after_latest@999")
    run = train(_cfg(tmp_path, max_steps=5), progress=False)
    assert checkpoint.load_state(run)["step"] == 5


def test_load_run_is_the_one_path_from_a_run_folder_to_a_model(tmp_path):
    """suite.runtime.load_run: the stored config (plus overrides) built, the EMA (or raw) weights loaded, moved to
    `device`; `config=` and `built=` (bench) skip the stored config and the second build; the moved names are
    still importable from suite.train."""
    import suite.runtime as rt
    import suite.train as tr

    for name in ("build", "resolve_device", "autocast_for", "init_distributed", "DistInfo", "method_options",
                 "load_run", "runtime_for"):
        assert getattr(tr, name) is getattr(rt, name), name
    run = train(_cfg(tmp_path), progress=False)
    w = _weights(run)
    cfg, method, data = rt.load_run(run, ["eval_repeats=3"], device="cpu")
    assert cfg.eval_repeats == 3 and cfg.max_steps == 20 and data.spec.name == "_test_blob"
    assert torch.equal(method.mu.detach(), w["ema.mu"]) and method.registered_name == "_test_gauss"
    _, raw, _ = rt.load_run(run, use_ema=False)
    assert torch.equal(raw.mu.detach(), w["model.mu"])
    built = rt.build(_cfg(tmp_path))
    cfg2, m2, d2 = rt.load_run(run, config=cfg, built=built)
    assert cfg2 is cfg and m2 is built[0] and d2 is built[1] and torch.equal(m2.mu.detach(), w["ema.mu"])
    with pytest.raises(ValueError, match="overrides or config"):
        rt.load_run(run, ["seed=1"], config=cfg)
