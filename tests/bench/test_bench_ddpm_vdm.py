"""Cost of one bound evaluation of the DDPM and VDM baselines (issue 4, performance), per example and per network
evaluation: the term-by-term n-step bound (n network passes per example), the single-random-t estimator (one pass),
and the bare network's forward pass on the same batch; then the standard error each estimator reaches for the same
budget of n network passes per example (single-t with i.i.d. and with stratified t).

    python -m pytest tests/bench/test_bench_ddpm_vdm.py -m bench -s --benchmark-json results/bench/ddpm_vdm.json
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from baselines.ddpm import DDPM
from baselines.vdm import VDM
from suite.data.base import DataSpec, bin_centres_from_index

THREADS = 1  # small nets: one intra-op thread; printed with every figure
B, N = 32, 50  # batch, steps of the bound
SHAPE, K = (1, 16, 16), 256
SPEC = DataSpec("bench16", "discretised", SHAPE, num_classes=K)


def _net(out_features: int):
    try:
        from suite.nets import build_backbone

        return build_backbone("conv", SHAPE, 1, out_features, channels=32, n_blocks=2), "suite.nets conv(32, 2 blocks)"
    except ImportError:  # suite.nets absent: a local MLP of similar cost
        from torch import nn

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                D = math.prod(SHAPE)
                self.f = nn.Sequential(nn.Linear(D + 1, 256), nn.SiLU(), nn.Linear(256, D * out_features))

            def forward(self, h, t):
                z = torch.cat([h.flatten(1), t[:, None]], 1)
                return self.f(z).reshape(h.shape[0], *SHAPE, out_features)

        return MLP(), "local MLP(256)"


def _case(name: str, t_sampling: str = "uniform"):
    torch.manual_seed(0)
    if name == "ddpm":
        net, desc = _net(2)
        m = DDPM(SPEC, net, T=N, schedule="cosine", variance="learned_range", loss_type="hybrid", t_sampling=t_sampling)
    else:
        net, desc = _net(1)
        m = VDM(SPEC, net, t_sampling=t_sampling)
    g = torch.Generator().manual_seed(0)
    x = bin_centres_from_index(torch.randint(0, K, (B, *SHAPE), generator=g), K)
    return m, x, desc


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("estimator", ["network", "single_t", "full"])
@pytest.mark.parametrize("case", ["ddpm", "vdm"])
def test_bench_bound_evaluation(benchmark, case, estimator):
    """Wall time of one evaluation over a batch of 32 (median of rounds), per example and per network evaluation."""
    m, x, desc = _case(case)
    if estimator == "network":
        t = torch.full((B,), 0.5)
        fn = lambda: m.net(x, t)  # noqa: E731  the bare backbone on the same batch
    elif estimator == "single_t":
        fn = lambda: m.nll(x, N)  # noqa: E731
    else:
        fn = lambda: m.full_bound(x, N)  # noqa: E731
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=3 if estimator == "full" else 30, warmup_rounds=1, iterations=1)
    med = benchmark.stats.stats.median
    passes = N if estimator == "full" else 1
    info = {"per_example_ms": 1e3 * med / B, "per_network_eval_us": 1e6 * med / (B * passes),
            "network_evals_per_example": passes, "threads": torch.get_num_threads(), "backbone": desc}
    benchmark.extra_info.update(info)
    print(f"\n{case} {estimator:8s} n={N} batch={B} threads={info['threads']} {desc} "
          f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}: {info['per_example_ms']:.3f} ms/example, "
          f"{info['per_network_eval_us']:.1f} us per network evaluation, {passes} evaluations/example")


@pytest.mark.parametrize("case", ["ddpm", "vdm"])
def test_stderr_at_fixed_budget(case):
    """Budget: n network passes per example. One term-by-term bound vs the mean of n single-t draws (i.i.d. t, and
    t stratified over the n draws). Prints each estimator's per-example standard error (over R repeats); checks that
    all three estimate the same bound (5 combined s.e.)."""
    R, n_ex = 12, 4
    res = {}
    for mode in ("uniform", "stratified"):
        m, x, desc = _case(case, mode)
        x = x[:n_ex]
        with torch.no_grad():
            if mode == "uniform":
                full = torch.stack([m.full_bound(x, N, generator=torch.Generator().manual_seed(r))
                                    for r in range(R)]).double()  # (R, n_ex)
                res["full"] = (full.mean().item(), full.std(0).mean().item())
            g = torch.Generator().manual_seed(10_000)
            # stratification runs across the batch, so the N draws of one example form the batch
            draws = torch.stack([torch.stack([m.nll(x[j:j + 1].expand(N, *SHAPE), N, generator=g).double()
                                              for j in range(n_ex)]) for _ in range(R)])  # (R, n_ex, N)
        means = draws.mean(2)
        res[f"single_{mode}"] = (means.mean().item(), means.std(0).mean().item())
    line = ", ".join(f"{k} {v[0]:.2f} nats s.e. {v[1]:.3f}" for k, v in res.items())
    print(f"\n{case} budget {N} network evaluations/example ({desc}, threads={torch.get_num_threads()}): {line}")
    for k in ("single_uniform", "single_stratified"):
        se = math.hypot(res["full"][1], res[k][1]) / math.sqrt(R * n_ex)
        assert abs(res[k][0] - res["full"][0]) <= 5 * se + 1e-6, (k, res)
