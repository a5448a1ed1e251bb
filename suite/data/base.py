"""The one way every data set describes itself (`DataSpec`) and yields batches (`Dataset`).

Values a batch holds, by kind:
  continuous   float32, the data's own real values (toys)
  discretised  float32 bin centres (2k - 1)/K - 1 in [-1, 1], k = 1..K (images)
  discrete     int64 class indices in 0..K-1 (binarised MNIST, text)

Methods and evaluators see only `spec` and `batches(...)`; they never special-case a data set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

Kind = Literal["continuous", "discretised", "discrete"]
SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Bad or missing data: the message names the file, what is wrong and what to do."""


@dataclass(frozen=True)
class DataSpec:
    name: str
    kind: Kind
    shape: tuple[int, ...]
    num_classes: int | None = None  # K: bins (discretised) or classes (discrete); None for continuous
    value_map: str = ""  # how raw values map to the model's space, in words
    split_sizes: dict[str, int] = field(default_factory=dict)  # examples per split
    protocol: dict[str, str] = field(default_factory=dict)  # e.g. text crop / stride protocol per split
    source: str = ""  # where the bytes come from
    stand_in_for: str | None = None  # e.g. the embedded text stands in for text8

    def __post_init__(self):
        if self.kind not in ("continuous", "discretised", "discrete"):
            raise ValueError(f"DataSpec {self.name!r}: kind must be continuous, discretised or discrete, got {self.kind!r}")
        if self.kind != "continuous" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"DataSpec {self.name!r}: a {self.kind} data set needs num_classes K >= 2, got {self.num_classes}")
        if any(int(s) < 1 for s in self.shape):
            raise ValueError(f"DataSpec {self.name!r}: shape must be positive, got {self.shape}")

    @property
    def ndim(self) -> int:
        """D: the number of dimensions of one example (pixels x channels, characters, coordinates)."""
        return math.prod(self.shape)

    @property
    def K(self) -> int | None:
        return self.num_classes

    @property
    def bin_centres(self) -> torch.Tensor:
        """Centres (2k - 1)/K - 1, k = 1..K, of a discretised data set (float64)."""
        if self.kind != "discretised":
            raise ValueError(f"{self.name} is {self.kind}, not discretised: it has no bins")
        K = self.num_classes
        return (2 * torch.arange(1, K + 1, dtype=torch.float64) - 1) / K - 1


def bin_centres_from_index(idx: torch.Tensor, K: int) -> torch.Tensor:
    """Bin index 0..K-1 -> centre (2k + 1)/K - 1 in [-1, 1] (k 0-based), float32."""
    return ((2 * idx.to(torch.float32) + 1) / K - 1).to(torch.float32)


def index_from_bin_centres(x: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of `bin_centres_from_index`: nearest bin index, clamped to 0..K-1."""
    return torch.clamp(torch.round(((x.to(torch.float64) + 1) * K - 1) / 2), 0, K - 1).long()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, epoch, split, rank...), stable across runs."""
    h = 1469598103934665603
    for p in parts:
        h ^= int(p) & 0xFFFFFFFFFFFFFFFF
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class Dataset:
    """A data set with a spec and a uniform batch iterator.

    Subclasses provide `spec` and `examples(split)` (a tensor of all examples of a split, in the model's
    value space, or raw values transformed on the fly by `transform`). Everything random (order, dynamic
    binarisation, crops) derives from (seed, epoch, split, rank), so a pass is reproducible.
    """

    spec: DataSpec

    def examples(self, split: str) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def transform(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Map a batch of stored examples to model values (identity unless the data set overrides it)."""
        return raw

    def present(self) -> bool:
        """Whether the bytes are available without a download."""
        return True

    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {self.spec.name}: use one of {SPLITS}")

    def num_examples(self, split: str) -> int:
        self.check_split(split)
        return self.spec.split_sizes[split]

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> Iterator[torch.Tensor]:
        """One pass over `split`. Train shuffles and drops the ragged last batch by default; val/test do not.

        With world_size > 1 each rank gets a disjoint, interleaved shard of the (shuffled) order.
        """
        self.check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        train = split == "train"
        shuffle = train if shuffle is None else shuffle
        drop_last = train if drop_last is None else drop_last
        data = self.examples(split)
        n = data.shape[0]
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, SPLITS.index(split)))
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        order = order[rank::world_size]
        # transformation randomness (e.g. binarisation) is per rank, drawn in data order
        tg = torch.Generator().manual_seed(derive_seed(seed, epoch, SPLITS.index(split), 1000 + rank))
        stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
        for i in range(0, stop, batch_size):
            batch = self.transform(data[order[i : i + batch_size]], tg)
            yield batch.to(device) if device is not None else batch
