"""`python -m suite.data.truth [--data-seed N]`: the mean exact -ln p per split of every ground-truth data set
(docs/truth.md's table), in nats per example and in the data set's reporting unit (suite/units.py), beside the
independent-dimensions null model of suite.evaluate.null_model_rows on the same split."""

from __future__ import annotations

import argparse
import math

import torch

from suite import units
from suite.data import get_dataset
from suite.data.truth import has_exact_nll
from suite.evaluate import null_model_rows

NAMES = ("text_hmm", "mnist_mixture_binarized", "mnist_mixture_256", "mnist_mixture_16", "gmm_2d", "binary_heartbeat")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| data set | split | n | mean -ln p (nats) | s.e. | bits/dim | reported unit | null model (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in NAMES:
        d = get_dataset(name, data_seed=args.data_seed)
        assert has_exact_nll(d), name
        D, unit = d.spec.ndim, units.default_unit(d.spec.kind, name)
        for split in ("train", "val", "test"):
            mean, se = units.mean_and_stderr(d.exact_nll(split).numpy())
            null = null_model_rows(d, split=split, seed=args.data_seed, unit="nats")[0]["value"]
            shown = f"{units.nats_to(mean, unit, D):.4f} {unit}" if unit not in ("nats", "nats/image") else ""
            print(f"| {name} | {split} | {d.num_examples(split)} | {mean:.4f} | {se:.4f} | "
                  f"{units.nats_to(mean, 'bits/dim', D):.5f} | {shown or f'{mean:.4f} {unit}'} | {null:.4f} |")
    print(f"\nheartbeat: ln 5 = {math.log(5):.6f} nats = {math.log2(5):.6f} bits per sequence")


if __name__ == "__main__":
    main()
