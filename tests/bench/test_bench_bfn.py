"""BFN training-step cost relative to the bare network (pytest-benchmark; not a timed unit test).

    python -m pytest tests/bench/test_bench_bfn.py -m bench -s

For each BFN variant: the time of one training step (loss + backward) divided by the time of the bare
network's forward + backward (a mean-square loss on its output) on the same batch. Both run in one process,
interleaved A B A B after warm-up; the ratio is the median of the per-round ratios, printed with a 95 %
bootstrap interval for that median (on a shared VM a single round's ratio can be 10 % off). The thread count and
allocator settings are printed with the table; ratios also land in pytest-benchmark's extra_info (JSON).
Targets (issue 3): <= 1.05 for continuous-time losses, <= 1.5 for the n-step losses of discretised (K = 256)
and discrete (K = 27) data; DESIGN.md adds <= 2 for K = 1024. Rows with target "-" are for information.

Backbones (suite.nets): `conv` (32 channels, 2 residual blocks) on 1x28x28 images at batch 32, and
`transformer` (d_model 128, 4 layers, 4 heads) on text of length 256 with K = 27 at batch 16.
BFN_BENCH_ROUNDS (default 60) and BFN_BENCH_THREADS (default: torch's) change the rounds / intra-op threads.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from unittest import mock

import numpy as np
import pytest
import torch

from suite.bfn import fast
from suite.data.base import DataSpec
from suite.methods import build_method

ROUNDS = int(os.environ.get("BFN_BENCH_ROUNDS", "60"))
WARMUP = 3
RESULTS: list[tuple[str, float, float, float, tuple[float, float], float]] = []
NOTES: list[str] = []
IMAGE_NET = ("conv", {"channels": 32, "n_blocks": 2})
TEXT_NET = ("transformer", {"d_model": 128, "n_layers": 4, "n_heads": 4})


def _settings() -> str:
    names = ("LD_PRELOAD", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in names if k in os.environ}
    return (
        f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
        f"inter-op threads {torch.get_num_interop_threads()}, allocator: glibc malloc, env {env or 'defaults'}, "
        f"compiled CPU k-hat (numba) {'on' if fast.khat_numba.enabled(torch.zeros(1)) else 'off'}"
    )


@pytest.fixture(scope="module", autouse=True)
def _report():
    old = torch.get_num_threads()
    if os.environ.get("BFN_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BFN_BENCH_THREADS"]))
    yield
    print("\n" + _settings())
    print(f"{'variant':62s} {'bare ms':>8s} {'BFN ms':>8s} {'ratio':>6s} {'95% CI':>13s} {'target':>6s}")
    for name, bare, step, ratio, (lo, hi), target in RESULTS:
        tgt = "-" if math.isnan(target) else f"{target:.2f}"
        print(f"{name:62s} {bare:8.1f} {step:8.1f} {ratio:6.3f} {lo:6.3f}-{hi:6.3f} {tgt:>6s}")
    for note in NOTES:
        print(note)
    torch.set_num_threads(old)


def _median_ci(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval for the median (fixed seed, so a run's printout is reproducible from its
    timings)."""
    v = np.asarray(values)
    meds = np.median(np.random.default_rng(0).choice(v, (draws, v.size)), axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def _interleaved(bare, step) -> tuple[float, float, float, tuple[float, float]]:
    """Median bare time, median step time, median per-round ratio and its 95 % interval; measured bare, step,
    bare, step, ..."""
    t_bare, t_step = [], []
    for r in range(WARMUP + ROUNDS):
        t0 = time.perf_counter()
        bare()
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        if r >= WARMUP:
            t_bare.append(t1 - t0)
            t_step.append(t2 - t1)
    ratios = [s / b for b, s in zip(t_bare, t_step, strict=True)]
    return statistics.median(t_bare), statistics.median(t_step), statistics.median(ratios), _median_ci(ratios)


def _run(benchmark, label: str, spec: DataSpec, x: torch.Tensor, variants, net) -> None:
    """variants: (name, method, hyperparameters, n_steps, target[, patch]) rows, each timed against its own bare
    net; `patch`, a context-manager factory, is entered around every timed step of its row."""
    backbone, net_kw = net
    pairs = {}
    for name, method, hp, n, _, *patch in variants:
        torch.manual_seed(0)
        model = build_method(method, spec, backbone=backbone, backbone_kwargs=net_kw, **hp)
        h = torch.rand(x.shape[0], *spec.shape, model.net.in_features) * 2 - 1
        t = torch.rand(x.shape[0])

        def bare(net=model.net, h=h, t=t):
            net.zero_grad(set_to_none=True)
            net(h, t).square().mean().backward()

        def step(model=model, n=n, patch=patch[0] if patch else contextlib.nullcontext):
            with patch():
                model.zero_grad(set_to_none=True)
                model.loss(x, n).mean().backward()

        pairs[name] = (bare, step)

    res = benchmark.pedantic(lambda: {k: _interleaved(*v) for k, v in pairs.items()}, rounds=1, iterations=1)
    for name, _, _, _, target, *_ in variants:
        bare, step, ratio, ci = res[name]
        RESULTS.append((f"{label}: {name}", 1e3 * bare, 1e3 * step, ratio, ci, target))
        benchmark.extra_info[name] = {"bare_ms": 1e3 * bare, "bfn_ms": 1e3 * step, "ratio": ratio,
                                      "ratio_ci95": list(ci), "target": target}  # fmt: skip


def _torch_path():
    """The torch path, as on a GPU: out_params, the torch routes for k-hat (fast.khat_torch) and the square as
    torch passes, instead of the compiled CPU term (fast.khat_numba)."""
    return mock.patch.dict(os.environ, {"BFNBENCH_NUMBA": "0"})


def test_bench_images(benchmark):
    """MNIST-sized images (1x28x28, K = 256), batch 32."""
    K, nan = 256, float("nan")
    spec = DataSpec("mnist_like", "discretised", (1, 28, 28), K)
    x = (2 * torch.randint(0, K, (32, 1, 28, 28)) + 1).float() / K - 1
    variants = [
        ("bfn_continuous L^inf (continuous-data model)", "bfn_continuous", {}, None, 1.05),
        ("bfn_discretised L^inf (K=256)", "bfn_discretised", {}, None, 1.05),
        ("bfn_discretised L^inf, torch path (as on GPU)", "bfn_discretised", {}, None, nan, _torch_path),
        ("bfn_discretised L^n n=10 (K=256, 1 y-sample, default)", "bfn_discretised", {}, 10, 1.5),
        ("bfn_discretised L^n n=10 (K=256, 10 y-samples, reference)", "bfn_discretised", {"n_y_samples": 10}, 10, nan),
    ]
    _run(benchmark, "1x28x28 conv", spec, x, variants, IMAGE_NET)
    NOTES.append(_receiver_paths_note(spec, x, 10))


def test_bench_images_batch128(benchmark):
    """The discretised rows again at batch 128, for information: the BFN-side work has a part that does not grow
    with the batch (per-step dispatches, small per-example tensors), which a larger batch amortises."""
    K, nan = 256, float("nan")
    spec = DataSpec("mnist_like", "discretised", (1, 28, 28), K)
    x = (2 * torch.randint(0, K, (128, 1, 28, 28)) + 1).float() / K - 1
    variants = [
        ("bfn_discretised L^inf (K=256, batch 128)", "bfn_discretised", {}, None, nan),
        ("bfn_discretised L^n n=10 (K=256, 1 y-sample, batch 128)", "bfn_discretised", {}, 10, nan),
    ]
    _run(benchmark, "1x28x28 conv", spec, x, variants, IMAGE_NET)


def _receiver_paths_note(spec, x, n) -> str:
    """How the discretised receiver summed the elements of one L^n batch like the timed ones (untrained
    network, i uniform on 1..n): the closed form, a window of bins, all K bins, or the prior (t = 0)."""
    from suite.bfn.fast import receiver

    torch.manual_seed(0)
    model = build_method("bfn_discretised", spec, backbone=IMAGE_NET[0], backbone_kwargs=IMAGE_NET[1])
    i = torch.arange(x.shape[0]) % n + 1
    t = (i.double() - 1) / n
    with torch.no_grad():
        mu_x, sigma_x = model.out_params(model.flow(x, t), t)
    alpha = model.bcast(model.schedule.alpha_i(i, n)).float().expand_as(mu_x)
    y = x + torch.randn_like(x) / alpha.sqrt()
    keep = i > 1
    paths = receiver.receiver_paths(mu_x[keep].reshape(-1), sigma_x[keep].reshape(-1), alpha[keep].reshape(-1),
                                   y[keep].reshape(1, -1), spec.num_classes)  # fmt: skip
    counts = torch.bincount(paths.long(), minlength=3).tolist() + [int((~keep).sum()) * mu_x[0].numel()]
    share = ", ".join(f"{name} {c / sum(counts):.0%}" for name, c in zip(("closed form", "window", "all K bins",
                                                                        "prior"), counts, strict=True))  # fmt: skip
    return f"receiver paths, discretised L^n n={n} (K={spec.num_classes}), i = 1..{n} cycled over the batch: {share}"


def test_bench_binary_images(benchmark):
    """Binarised MNIST-sized images (K = 2), batch 32."""
    spec = DataSpec("binary_mnist_like", "discrete", (1, 28, 28), 2)
    x = torch.randint(0, 2, (32, 1, 28, 28))
    variants = [
        ("bfn_discrete L^inf (K=2)", "bfn_discrete", {}, None, 1.05),
        ("bfn_discrete L^n n=784 (K=2, paper receiver)", "bfn_discrete", {}, 784, float("nan")),
    ]
    _run(benchmark, "1x28x28 conv", spec, x, variants, IMAGE_NET)


def test_bench_text(benchmark):
    """Text of length 256, K = 27, batch 16."""
    K = 27
    spec = DataSpec("text_like", "discrete", (256,), K)
    x = torch.randint(0, K, (16, 256))
    variants = [
        ("bfn_discrete L^inf (K=27)", "bfn_discrete", {}, None, 1.05),
        ("bfn_discrete L^n n=100 (K=27, paper receiver)", "bfn_discrete", {}, 100, 1.5),
        ("bfn_discrete L^n n=100 (K=27, factorised_1d receiver)", "bfn_discrete", {"receiver": "factorised_1d"}, 100,
         float("nan")),
    ]  # fmt: skip
    _run(benchmark, "text 256 transformer", spec, x, variants, TEXT_NET)


def test_bench_large_vocabulary(benchmark):
    """K = 1024 classes, length 128, batch 8 (DESIGN.md: the reference's K x K receiver needs ~40 GiB here)."""
    K = 1024
    spec = DataSpec("vocab_like", "discrete", (128,), K)
    x = torch.randint(0, K, (8, 128))
    variants = [
        ("bfn_discrete L^inf (K=1024)", "bfn_discrete", {}, None, float("nan")),
        ("bfn_discrete L^n n=100 (K=1024, paper receiver)", "bfn_discrete", {}, 100, 2.0),
        ("bfn_discrete L^n n=100 (K=1024, factorised_1d receiver)", "bfn_discrete", {"receiver": "factorised_1d"}, 100,
         2.0),
    ]  # fmt: skip
    _run(benchmark, "text 128 transformer", spec, x, variants, TEXT_NET)
