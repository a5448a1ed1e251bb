"""Shared by the tests against the official BFN code: where its reference files are, and a network stub."""

import os
from pathlib import Path

import torch

#: shared/reference/official_nets (README there): layouts, small official-format checkpoints, recorded outputs
REF = Path(os.environ.get("BFNBENCH_OFFICIAL_REF", Path(__file__).resolve().parents[3] / "shared/reference/official_nets"))


class FixedNet(torch.nn.Module):
    """A network stub that returns one recorded output whatever its input."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.register_buffer("out", out)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, h, t):
        return self.out
