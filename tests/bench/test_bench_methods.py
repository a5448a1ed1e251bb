"""pytest-benchmark micro-benchmarks of every method on its embedded comparison's backbone.

Per (comparison, method): one training step (loss + backward + AdamW), one sampling step (sample with
n_steps=1, i.e. one network pass plus the method's own arithmetic), and one NLL-bound evaluation of a
batch (continuous time, or a discrete-time model's single-t estimator on its full grid).

    pytest tests/bench/test_bench_methods.py -m bench --benchmark-autosave
    pytest-benchmark compare 0001 0002          # two saved runs side by side
"""

import pytest
import torch

from suite.experiments import load_comparisons
from suite.train import build

CASES = [(c, m) for c in load_comparisons("embedded") for m in c.methods]
IDS = [f"{c.name}-{m}" for c, m in CASES]
BATCH = 16


def _setup(comp, method_name):
    cfg = comp.run_config(method_name, "/tmp/bfnbench-bench")
    method, data = build(cfg)
    x = next(data.batches("train", BATCH, seed=0))
    return method, x


@pytest.mark.parametrize("comp, method_name", CASES, ids=IDS)
def test_train_step(benchmark, comp, method_name):
    method, x = _setup(comp, method_name)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = method.loss(x).mean()
        loss.backward()
        opt.step()
        return loss

    benchmark.extra_info.update(threads=torch.get_num_threads(), batch=BATCH,
                                params=sum(p.numel() for p in method.parameters()))
    assert torch.isfinite(benchmark(step))


@pytest.mark.parametrize("comp, method_name", CASES, ids=IDS)
def test_sampling_step(benchmark, comp, method_name):
    method, _ = _setup(comp, method_name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = benchmark(lambda: method.sample(BATCH, 1, generator=g))
    assert out.shape == (BATCH, *method.spec.shape)


@pytest.mark.parametrize("comp, method_name", CASES, ids=IDS)
def test_nll_eval(benchmark, comp, method_name):
    method, x = _setup(comp, method_name)
    with torch.no_grad():
        v = benchmark(lambda: method.nll(x))
    assert v.shape == (BATCH,) and torch.isfinite(v).all()
