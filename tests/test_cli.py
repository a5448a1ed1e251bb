"""The command line: bad input gets one clear error line and exit code 2; nothing is written."""

import pytest

from suite.cli import main


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "method=nonexistent", "max_steps=1"], "unknown method"),
        (["train", "dataset=nonexistent", "max_steps=1"], "unknown data set"),
        (["train", "method=bfn_continuous", "dataset=swiss_roll", "backbone=mlp", "method_kwargs.sigma1=-1"], "sigma1"),
        (["train", "method=bfn_discrete", "dataset=binary_heartbeat", "backbone=mlp", "method_kwargs.beta1=0"], "beta1"),
        (["train", "eval_n_steps=[0]"], "eval_n_steps"),
        (["eval", "/nonexistent/run"], "no checkpoint"),
    ],
)
def test_bad_input_is_one_clear_line(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ([f"out_dir={tmp_path}/runs"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("bfnbench: error:") and match in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("weights.safetensors"))


def test_data_list_shows_every_data_set(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("binarized_mnist", "cifar10_256", "text8", "mnist_embedded_16", "text_embedded", "swiss_roll"):
        assert name in out


def test_overrides_between_flags_join_the_others(tmp_path, capsys):
    """`train a=1 --quiet b=2 --resume c=3`: every key=value is an override, wherever it stands (argparse
    alone rejected those after a flag)."""
    from suite import checkpoint
    from tests.helpers.toy_method import Gauss  # noqa: F401  registers _test_gauss, _test_blob

    argv = ["train", "method=_test_gauss", "--quiet", "dataset=_test_blob", "backbone=none", "batch_size=8",
            "max_steps=3", f"out_dir={tmp_path}", "name=mixed"]
    assert main(argv) == 0
    cfg = checkpoint.load_state(tmp_path / "mixed")["config"]
    assert (cfg["method"], cfg["dataset"], cfg["max_steps"], cfg["name"]) == ("_test_gauss", "_test_blob", 3, "mixed")
    assert main(argv[:2] + ["--resume"] + argv[2:-2] + ["max_steps=4", f"out_dir={tmp_path}", "name=mixed"]) == 0
    assert checkpoint.load_state(tmp_path / "mixed")["step"] == 4


def test_resume_of_finished_run_says_so(tmp_path, capsys):
    from tests.helpers.toy_method import Gauss  # noqa: F401

    argv = ["train", "method=_test_gauss", "dataset=_test_blob", "backbone=none", "batch_size=8", "max_steps=2",
            f"out_dir={tmp_path}", "name=done", "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "already finished (ckpt-00000002, step 2 >= max_steps=2); nothing to do" in err
