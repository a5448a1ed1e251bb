#!/usr/bin/env bash
# GPU check for the official-checkpoint path (docs/official.md), within about 5 minutes on one CUDA GPU:
#   1. device and versions;  2. the CUDA tests (bf16 autocast vs float32 on every small official checkpoint);
#   3. one reproduction cell (Table 2, n = 10) on the small MNIST checkpoint and random MNIST-format images;
#   4. the step cost: the full-size official networks, forward + backward, bf16 autocast vs float32 (ratios).
# Needs the reference files: BFNBENCH_OFFICIAL_REF=<.../official_nets> (default ../shared/reference/official_nets,
# or build/official_nets inside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
if [ -z "${BFNBENCH_OFFICIAL_REF:-}" ]; then
  for d in ../shared/reference/official_nets build/official_nets; do [ -f "$d/layouts.json" ] && export BFNBENCH_OFFICIAL_REF="$(cd "$d" && pwd)" && break; done
fi
echo "== device and versions"
python - <<'PY'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device")
PY
echo "== CUDA tests (reference files: ${BFNBENCH_OFFICIAL_REF:-not found})"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_official_nets.py -k cuda -rs
echo "== one reproduction cell on the small MNIST checkpoint"
timeout 120 python - <<'PY'
import math, os, tempfile, time
from pathlib import Path
from suite.reproduce import reproduce
from tests.data_writers import write_mnist
ref = Path(os.environ["BFNBENCH_OFFICIAL_REF"])
with tempfile.TemporaryDirectory() as d:
    write_mnist(Path(d) / "mnist", n_train=100, n_test=1000)
    t0 = time.perf_counter()
    rows = reproduce(ref / "small", Path(d), tables=[2], steps=[10], repeats=2, progress=False,
                     data_options=dict(strict_sizes=False))
    for r in rows:
        print(f"table 2 n=10: {r['value']:.2f} +- {r['stderr']:.2f} {r['unit']} ({r['n_examples']} random images, "
              f"{r['n_repeats']} passes, {r['seconds']:.1f} s, estimated {r['estimated_seconds']:.1f} s) on {r['device']}")
PY
echo "== step cost of the full-size official networks (random weights): bf16 autocast vs float32"
timeout 150 python - <<'PY'
import time, torch
from suite.nets import build_backbone
torch.backends.cuda.matmul.allow_tf32 = False
cases = [("official_mnist_discrete", (1, 28, 28), 1, 1, 100), ("official_cifar10_discretized_256bins", (3, 32, 32), 1, 2, 100),
         ("official_text8_discrete", (256,), 27, 27, 100)]
for name, shape, fin, fout, B in cases:
    net = build_backbone(name, shape, fin, fout).cuda()
    h = torch.randn(B, *shape, fin, device="cuda"); t = torch.rand(B, device="cuda")
    def step(dtype):
        net.autocast_dtype = dtype
        net.zero_grad(set_to_none=True)
        net(h, t).float().square().mean().backward()
    res = {}
    for dtype in (None, torch.bfloat16, None, torch.bfloat16):  # interleaved, after a warm-up of each
        for _ in range(2): step(dtype)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(5): step(dtype)
        torch.cuda.synchronize(); res.setdefault(str(dtype), []).append((time.perf_counter() - t0) / 5)
    f32, bf16 = min(res["None"]), min(res["torch.bfloat16"])
    print(f"{name}: batch {B} fwd+bwd float32 {f32*1e3:.1f} ms, bf16 {bf16*1e3:.1f} ms, ratio f32/bf16 {f32/bf16:.2f}; "
          f"eval forward ~{B/(bf16/3):.0f} examples/s (bf16, forward ~ 1/3 of a step)")
    del net; torch.cuda.empty_cache()
PY
echo "gpu_check: OK"
