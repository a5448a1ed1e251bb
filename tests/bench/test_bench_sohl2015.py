"""Cost of one bound evaluation of the Sohl-Dickstein et al. 2015 baselines (issue 4, performance), per example and
per network evaluation, for the full n-step bound (n - 1 network passes per example) and the single-random-step
estimator (one pass), and the standard error each reaches for the same budget of network passes.

    python -m pytest tests/bench/test_bench_sohl2015.py -m bench -s --benchmark-json results/bench/sohl2015.json
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from baselines.sohl2015 import SohlBinomial, SohlGaussian
from suite.data.base import DataSpec

THREADS = 1  # tiny nets: one intra-op thread; printed with every figure
B = 64


def _net(shape, out_features):
    try:
        from suite.nets import build_backbone

        return build_backbone("mlp", shape, 1, out_features, width=128, depth=2), "suite.nets mlp(width=128, depth=2)"
    except (ImportError, AttributeError):  # suite.nets not there yet: the local tiny MLP of the same size
        from baselines.sohl2015.tiny import TinyMLP

        return TinyMLP(shape, 1, out_features, hidden=128, depth=2), "TinyMLP(hidden=128, depth=2)"


def _case(name: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "sohl_gaussian/swiss_roll":
        spec = DataSpec("swiss_roll", "continuous", (2,))
        net, desc = _net(spec.shape, 20)
        t = 1.5 * math.pi * (1 + 2 * torch.rand(B, generator=g))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 7.5
        return SohlGaussian(spec, net, T=40), x, desc
    spec = DataSpec("binary_heartbeat", "discrete", (20,), 2)
    net, desc = _net(spec.shape, 10)
    phase = torch.randint(0, 5, (B,), generator=g)
    x = ((torch.arange(20)[None] - phase[:, None]) % 5 == 0).long()
    return SohlBinomial(spec, net, T=2000), x, desc


CASES = ["sohl_gaussian/swiss_roll", "sohl_binomial/heartbeat"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("estimator", ["single_t", "full"])
@pytest.mark.parametrize("case", CASES)
def test_bench_bound_evaluation(benchmark, case, estimator):
    """Wall time of one nll(x) over a batch of 64: per example and per network evaluation (median of rounds)."""
    m, x, desc = _case(case)
    full = estimator == "full"
    fn = (lambda: m.full_bound(x)) if full else (lambda: m.nll(x))
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=5 if full else 50, warmup_rounds=1, iterations=1)
    med = benchmark.stats.stats.median
    passes = (m.T - 1) if full else 1
    info = {
        "per_example_ms": 1e3 * med / B,
        "per_network_eval_us": 1e6 * med / (B * passes),
        "network_evals_per_example": passes,
        "threads": torch.get_num_threads(),
        "backbone": desc,
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{case} {estimator:8s} T={m.T} batch={B} threads={info['threads']} {desc} "
        f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}: {info['per_example_ms']:.3f} ms/example, "
        f"{info['per_network_eval_us']:.2f} us per network evaluation, {passes} evaluations/example"
    )


@pytest.mark.parametrize("case", CASES)
def test_stderr_at_fixed_budget(case):
    """Same budget of T - 1 network passes per example: one full bound vs the mean of T - 1 single-step estimates.
    Prints the per-example standard error of each (over 32 repeats of the full bound, 32 x (T - 1) single draws)."""
    m, x, desc = _case(case)
    x = x[:8]
    R, n = 32, m.T - 1
    with torch.no_grad():
        full = torch.stack([m.full_bound(x, generator=torch.Generator().manual_seed(r)) for r in range(R)]).double()
        g = torch.Generator().manual_seed(10_000)
        single = torch.stack(
            [m.nll(x.repeat(n, *([1] * (x.dim() - 1))), generator=g).view(n, -1) for _ in range(R)]
        ).double()
    se_full = full.std(0).mean().item()  # one full bound = the budget
    se_single = (single.std(1) / math.sqrt(n)).mean().item()  # mean of n single draws = the same budget
    mf, ms = full.mean().item(), single.mean().item()
    print(
        f"\n{case} budget {n} network evaluations/example ({desc}): full bound {mf:.3f} nats, s.e. {se_full:.4f}; "
        f"mean of {n} single-step draws {ms:.3f} nats, s.e. {se_single:.4f} (ratio {se_single / se_full:.1f}x)"
    )
    assert abs(mf - ms) <= 5 * math.hypot(se_full / math.sqrt(R), se_single / math.sqrt(R)) + 1e-6
