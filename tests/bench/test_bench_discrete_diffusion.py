"""Cost of one bound evaluation of the discrete diffusion baselines (multinomial, masked), per example and per
network evaluation, for the one-pass single-t estimator and the full n-step bound (n passes), beside the bare
network's forward on the same batch; and the standard error each estimator reaches for a fixed budget of network
passes. Run: pytest tests/bench/test_bench_discrete_diffusion.py -m bench -s
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from suite.data.base import DataSpec
from suite.methods import build_method

K, L, B, N_STEPS = 27, 64, 16, 50  # text-like: 27 classes, length 64; the full bound uses 50 passes
NET = dict(backbone="transformer", backbone_kwargs={"d_model": 64, "n_layers": 2, "n_heads": 4})
SPEC = DataSpec("bench_text", "discrete", (L,), K)
METHODS = {"multinomial_diffusion": {"T": N_STEPS}, "masked_diffusion": {}}


def build(name: str, **kw):
    torch.manual_seed(0)
    return build_method(name, SPEC, **NET, **METHODS[name], **kw).eval()


def batch(n: int = B) -> torch.Tensor:
    return torch.randint(K, (n, L), generator=torch.Generator().manual_seed(1))


def header() -> str:
    return (f"[threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
            f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '-')} torch={torch.__version__} "
            f"B={B} L={L} K={K} n={N_STEPS}]")


def estimators(name: str):
    """name -> (callable, network passes per example) on one fixed batch."""
    m, x = build(name), batch()
    h = torch.nn.functional.one_hot(x, K if name == "multinomial_diffusion" else K + 1).float()  # K + 1: the mask
    t = torch.rand(B)
    return {
        "net_forward": (lambda: m.net(h, t), 1),
        "single_t": (lambda: m.nll(x, N_STEPS), 1),
        "full": (lambda: m.bound_terms(x, N_STEPS), N_STEPS),
    }


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("estimator", ["single_t", "full"])
def test_bench_bound_cost(benchmark, name, estimator):
    """pytest-benchmark record of one bound evaluation (a batch of B examples): single_t = 1 pass, full = n passes."""
    fn, passes = estimators(name)[estimator]
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=5 if estimator == "single_t" else 2, iterations=1, warmup_rounds=1)
    sec = benchmark.stats.stats.median
    benchmark.extra_info.update(per_example_s=sec / B, per_net_eval_s=sec / (B * passes), passes=passes)


@pytest.mark.parametrize("name", list(METHODS))
def test_bench_cost_relative_to_network(benchmark, name):
    """Interleaved (A B C A B C ...) after warm-up, medians: ms per example and per example-network-evaluation, and
    the ratio to the bare network forward (the bound's own arithmetic is O(B D K))."""
    fns = estimators(name)
    times: dict[str, list[float]] = {k: [] for k in fns}

    def rounds(r: int):
        with torch.no_grad():
            for _ in range(r):
                for k, (fn, _) in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)

    rounds(1)  # warm-up
    times = {k: [] for k in fns}
    benchmark.pedantic(rounds, args=(3,), rounds=1, iterations=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["net_forward"]
    lines = []
    for k, (_, passes) in fns.items():
        per_eval = med[k] / passes
        benchmark.extra_info[f"{k}_ms_per_example"] = med[k] / B * 1e3
        benchmark.extra_info[f"{k}_x_net_per_pass"] = per_eval / base
        lines.append(f"  {k:11s} {med[k] / B * 1e3:8.3f} ms/example  {per_eval / B * 1e3:7.4f} ms/example-pass  "
                     f"{per_eval / base:5.2f} x bare net per pass")
    print(f"\n{header()} {name}\n" + "\n".join(lines))


@pytest.mark.parametrize("name", list(METHODS))
def test_bench_standard_error_for_fixed_budget(benchmark, name):
    """Budget P = n network evaluations per example (same example, estimator noise only). Measured directly as the
    spread of R independent P-pass estimates: single-t iid (mean of P one-pass draws), single-t stratified (the P
    draws' t stratified), and the full term-by-term bound (one evaluation = P passes)."""
    P, R = N_STEPS, 24
    x1 = batch(1)

    def measure():
        out = {}
        with torch.no_grad():
            for mode in ("iid", "stratified"):
                m = build(name, t_sampling=mode)
                out[f"single_{mode}"] = torch.stack([m.nll(x1.repeat(P, 1), N_STEPS).double().mean() for _ in range(R)])
            out["full"] = sum(build(name).bound_terms(x1.repeat(R, 1), N_STEPS).values()).double()
        return out

    est = benchmark.pedantic(measure, rounds=1, iterations=1)
    lines = []
    for k, v in est.items():
        benchmark.extra_info[f"se_{k}"] = v.std().item()
        lines.append(f"  {k:18s} mean {v.mean().item():8.2f} nats/seq   s.e. at {P} passes/example "
                     f"{v.std().item():7.3f}")
    print(f"\n{header()} {name} (untrained net, R = {R} repeats)\n" + "\n".join(lines))
    assert all(torch.isfinite(v).all() for v in est.values())
