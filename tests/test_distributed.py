"""DDP training and sharded evaluation with the gloo backend on CPU, 2 processes (torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from suite import checkpoint
from suite.config import RunConfig
from suite.evaluate import nll_passes
from suite.train import build, train
from tests.helpers.toy_method import Gauss  # noqa: F401  registers the toy method

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_gloo_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    """Two ranks with batch 4 see, step by step, the same 8 examples as one process with batch 8 (the
    sharded order interleaves one permutation), and DDP averages their gradients: the weights agree up
    to float reduction order. Sharded evaluation covers the split exactly once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           str(ROOT / "tests" / "helpers" / "ddp_worker.py"), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["world"] == 2

    cfg = RunConfig(name="single", method="_test_gauss", dataset="_test_blob", backbone="none", batch_size=8,
                    max_steps=12, lr=0.05, ckpt_every=6, val_every=6, log_every=6, out_dir=str(tmp_path), seed=3,
                    method_kwargs={"noise": 0.0}).validate()
    single = train(cfg, progress=False)
    wa = load_file(str(checkpoint.latest(tmp_path / "ddp" / "ddp") / "weights.safetensors"))
    wb = load_file(str(checkpoint.latest(single) / "weights.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)

    method, data = build(cfg)
    checkpoint.load_weights(single, method, use_ema=False)
    means, _, count = nll_passes(method, data, split="test", n_repeats=2, batch_size=7)
    assert res["count"] == count == 40
    assert res["means"] == pytest.approx(means.tolist(), rel=1e-5)
