"""Fit the ground-truth models of suite/data/truth to the embedded data's TRAIN splits and write their parameters.

  truth_text_hmm.npz            64-state HMM, Baum-Welch on 8192 seeded chunks of 128 characters (about 4 min)
  truth_mnist_mixture_{K}.npz   100-component pixel mixtures, EM on the 8000 train digits: K = 2 on 4 seeded
                                Bernoulli(pixel/255) binarisations of each, K = 16 / 256 on bin = pixel*K//256

Everything is seeded (SETTINGS below), float64 and single-threaded, so a rerun on the same machine writes the same
bytes (the zip date is fixed). The parameters are stored as float64; the loaders renormalise rows in float64, so the
model the data sets sample from is exactly the stored numbers. Usage:

    python scripts/build_truth_assets.py [--only text_hmm mixture_2 ...] [--out DIR]

It prints the sha256 of every file written; PROVENANCE.md records them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.build_embedded_assets import write_npz as embedded_write_npz  # noqa: E402
from suite.data.embedded import MNIST_ASSET, EmbeddedText, read_mnist_npz  # noqa: E402
from suite.data.truth import HMM_ASSET, MIXTURE_ASSETS  # noqa: E402
from suite.data.truth.hmm import fit_hmm  # noqa: E402
from suite.data.truth.mixture import fit_mixture  # noqa: E402

ZIP_DATE = (2024, 1, 1, 0, 0, 0)
SETTINGS = {
    "text_hmm": dict(num_states=64, chunk_len=128, num_chunks=8192, iters=200, pseudo=1e-2, seed=0),
    "mixture_2": dict(K=2, num_components=100, iters=30, pseudo=1.0, seed=0, binarisations=4),
    "mixture_16": dict(K=16, num_components=100, iters=30, pseudo=1.0, seed=0),
    "mixture_256": dict(K=256, num_components=100, iters=30, pseudo=1.0, seed=0),
}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """The embedded assets' deterministic npz writer, with this script's zip date; returns the sha256."""
    return hashlib.sha256(embedded_write_npz(path, arrays, ZIP_DATE)).hexdigest()


def text_chunks(chunk_len: int, num_chunks: int, seed: int) -> torch.Tensor:
    """num_chunks non-overlapping chunks of the embedded text's train split, picked by a seeded permutation."""
    train = EmbeddedText().corpus("train").long()
    n = len(train) // chunk_len
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num_chunks]
    return train[: n * chunk_len].view(n, chunk_len)[pick.sort().values]


def mnist_bins(K: int, seed: int, binarisations: int = 1) -> torch.Tensor:
    """The train digits as bin indices (N, 784): pixel*K//256, or for K = 2 seeded Bernoulli(pixel/255) draws."""
    px = torch.from_numpy(read_mnist_npz(MNIST_ASSET)["train"].reshape(-1, 784).astype(np.int64))
    if K == 2:
        g = torch.Generator().manual_seed(seed)
        px = px.repeat(binarisations, 1)
        return (torch.rand(px.shape, generator=g, dtype=torch.float64) < px / 255.0).long()
    return px * K // 256


def build(name: str, out: Path) -> tuple[str, str]:
    s = SETTINGS[name]
    meta = json.dumps({"name": name, **s}, sort_keys=True)
    if name == "text_hmm":
        chunks = text_chunks(s["chunk_len"], s["num_chunks"], s["seed"])
        model, hist = fit_hmm(chunks, s["num_states"], 27, s["iters"], s["seed"], s["pseudo"], log=_log)
        arrays = dict(start=model.start.numpy(), trans=model.trans.numpy(), emit=model.emit.numpy())
        path = out / HMM_ASSET.name
    else:
        K = s["K"]
        x = mnist_bins(K, s["seed"], s.get("binarisations", 1))
        model, hist = fit_mixture(x, K, s["num_components"], s["iters"], s["seed"], s["pseudo"], log=_log)
        arrays = dict(weights=model.weights.numpy(), types=model.types.numpy())
        if K > 2:
            arrays["interior"] = model.interior.numpy()
        path = out / MIXTURE_ASSETS[K].name
    arrays.update(settings=np.array(meta), fit_mean_log_lik=np.array(hist, dtype=np.float64))
    return path.name, write_npz(path, arrays)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS), help="models to fit")
    ap.add_argument("--out", type=Path, default=HMM_ASSET.parent, help="output folder (default: suite/data/assets)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same summation order on every run
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        file, digest = build(name, args.out)
        print(f"output {digest}  {file}", flush=True)


if __name__ == "__main__":
    main()
