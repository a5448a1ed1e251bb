"""Run under torchrun: train the toy method with DDP (gloo) and evaluate it sharded; rank 0 writes JSON."""

import json
import sys

import torch.distributed as dist

import tests.helpers.toy_method  # noqa: F401  registers _test_blob / _test_gauss
from suite import checkpoint
from suite.config import RunConfig
from suite.evaluate import nll_passes
from suite.train import build, train

out = sys.argv[1]
cfg = RunConfig(name="ddp", method="_test_gauss", dataset="_test_blob", backbone="none", batch_size=4, max_steps=12,
                lr=0.05, ckpt_every=6, val_every=6, log_every=6, out_dir=out, seed=3,
                method_kwargs={"noise": 0.0}).validate()
run = train(cfg, progress=False)
method, data = build(cfg)
checkpoint.load_weights(run, method, use_ema=False)
means, _, count = nll_passes(method, data, split="test", n_repeats=2, batch_size=7)
if dist.get_rank() == 0:
    with open(f"{out}/result.json", "w") as f:
        json.dump({"means": means.tolist(), "count": count, "world": dist.get_world_size()}, f)
dist.destroy_process_group()
