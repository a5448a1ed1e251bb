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
