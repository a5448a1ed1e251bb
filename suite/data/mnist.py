"""MNIST and Fashion-MNIST from the standard idx files: dynamically binarised (K = 2) or discretised (256/16 bins).

`ImageDataset` (also used by CIFAR-10 and the embedded MNIST) keeps uint8 pixels in memory and makes model
values per batch in `transform`, so memory stays at one byte a pixel:
  binarised    x = 1[u < pixel/255], u ~ U[0, 1) redrawn on every pass (train and test), seeded from the
               run seed, epoch, split and rank (BFN paper: "dynamically binarized"; MATH.md s.6)
  discretised  bin k = pixel * K // 256 (K = 16: pixel >> 4), value = centre (2k + 1)/K - 1 in [-1, 1]

Splits: test = the official test file; val = the last 1% of the official training file (600 images, as the BFN
paper holds out 1% of train); train = the rest (59,400).
"""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from suite.data import io, register
from suite.data.base import SPLITS, DataError, Dataset, DataSpec, bin_centres_from_index

IMAGE_SHAPE = (1, 28, 28)
OFFICIAL_SIZES = {"train": 60000, "test": 10000}
VAL_FRACTION = 0.01
FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SOURCES = {
    "mnist": dict(
        title="MNIST",
        subdirs=("mnist", "MNIST/raw", "."),  # "." last: a data dir holding the four files directly
        fallback=(),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    ),
    "fashion_mnist": dict(
        title="Fashion-MNIST",
        # not "." : the file names equal MNIST's, so a bare data dir would be ambiguous
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        fallback=(Path("/usr/share/datasets/fashion-mnist"),),  # Debian's dataset-fashion-mnist (re-gzipped)
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    ),
}


def parse_idx(buf: bytes, path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes: magic 0x00 0x00 0x08 ndim, ndim big-endian uint32 sizes, then the data."""
    if len(buf) < 4 + 4 * ndim:
        raise io.corrupt(path, f"only {len(buf)} bytes, too short for an idx header")
    if buf[:2] != b"\0\0" or buf[2] != 0x08 or buf[3] != ndim:
        raise io.corrupt(path, f"bad idx magic number 0x{buf[:4].hex()}: expected 0x0000080{ndim} (unsigned bytes, "
                               f"{ndim} dimensions); not an idx{ndim}-ubyte file")
    dims = struct.unpack(f">{ndim}I", buf[4 : 4 + 4 * ndim])
    payload = len(buf) - 4 - 4 * ndim
    if math.prod(dims) != payload:
        raise io.corrupt(path, f"idx header says {'x'.join(map(str, dims))} = {math.prod(dims)} bytes of data, "
                               f"the file holds {payload} (truncated or corrupt)")
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_idx_pair(images: Path, labels: Path, shape: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,), checked against each other."""
    x = parse_idx(io.read_maybe_gzip(images), images, 3)
    y = parse_idx(io.read_maybe_gzip(labels), labels, 1)
    if tuple(x.shape[1:]) != shape:
        raise io.corrupt(images, f"images are {x.shape[1]}x{x.shape[2]}, expected {shape[0]}x{shape[1]}")
    if len(x) != len(y):
        raise io.corrupt(images, f"{len(x)} images but {labels.name} holds {len(y)} labels: the two files do not "
                                 f"belong together", "use the images and labels files of the same release")
    if len(y) and y.max() > 9:
        raise io.corrupt(labels, f"label {int(y.max())} outside 0..9")
    return x, y


class ImageDataset(Dataset):
    """uint8 images per split, in memory; `transform` binarises or discretises each batch (see module doc)."""

    def __init__(self, spec: DataSpec, mode: str):
        if mode not in ("binarized", "discretised"):
            raise ValueError(f"mode must be 'binarized' or 'discretised', got {mode!r}")
        K = spec.num_classes
        if mode == "discretised" and (K is None or K < 2 or K > 256 or 256 % K):
            raise ValueError(f"{spec.name}: bins must divide 256 (2, 4, ..., 256), got {K}")
        self._spec, self.mode = spec, mode
        self._cache: dict[str, torch.Tensor] | None = None

    #: False: the spec's split sizes are the official ones and loading checks the files match. True (a subset
    #: on purpose, strict_sizes=False): the sizes come from the files, so reading `spec` loads them.
    sizes_from_files: bool = False

    @property
    def spec(self) -> DataSpec:
        if self.sizes_from_files:
            self._splits()
        return self._spec

    def _load(self) -> dict[str, np.ndarray]:  # pragma: no cover - interface
        """uint8 arrays (N, C, H, W) for every split."""
        raise NotImplementedError

    def _splits(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            arrays = self._load()
            # np.require copies read-only buffers (np.frombuffer) so torch gets writable memory
            self._cache = {s: torch.from_numpy(np.require(arrays[s], np.uint8, ["C", "W"])) for s in SPLITS}
            sizes = {s: int(self._cache[s].shape[0]) for s in SPLITS}
            if sizes != self._spec.split_sizes:  # only reachable with a subset on purpose (strict_sizes=False)
                self._spec = replace(self._spec, split_sizes=sizes)
        return self._cache

    def examples(self, split: str) -> torch.Tensor:
        """Raw uint8 pixels (N, C, H, W); `transform` maps a batch to model values."""
        self.check_split(split)
        return self._splits()[split]

    def num_examples(self, split: str) -> int:
        self.check_split(split)
        return int(self._splits()[split].shape[0])

    def transform(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mode == "binarized":
            # Bernoulli(pixel/255): fresh uniforms per batch, so every pass draws a new binarisation
            u = torch.rand(raw.shape, generator=generator)
            return (u < raw.to(torch.float32) / 255.0).long()
        K = self._spec.num_classes
        return bin_centres_from_index(raw.long() * K // 256, K)


def image_spec(name: str, mode: str, K: int, shape: tuple[int, ...], sizes: dict[str, int], source: str,
               protocol: dict[str, str], stand_in_for: str | None = None) -> DataSpec:
    if mode == "binarized":
        kind, K, vmap = "discrete", 2, "pixel/255 -> Bernoulli draw per pass, int64 class 0/1"
    else:
        shift = f" (= pixel >> {int(math.log2(256 // K))})" if K < 256 else ""
        kind, vmap = "discretised", f"bin k = pixel*{K}//256{shift}; value = bin centre (2k+1)/{K} - 1 in [-1, 1]"
    return DataSpec(name, kind, shape, num_classes=K, value_map=vmap, split_sizes=dict(sizes),
                    protocol=dict(protocol), source=source, stand_in_for=stand_in_for)


def val_count(n_train_file: int, fraction: float = VAL_FRACTION) -> int:
    return max(1, int(round(n_train_file * fraction)))


class MnistDataset(ImageDataset):
    """MNIST or Fashion-MNIST from the idx files (gzip or not) in the data dir, downloaded only when allowed."""

    def __init__(self, name: str, which: str, mode: str, K: int, data_dir: Path | None = None,
                 download: bool | None = None, strict_sizes: bool = True):
        if which not in SOURCES:
            raise ValueError(f"unknown idx source {which!r}; known: {', '.join(SOURCES)}")
        self.which, self.src = which, SOURCES[which]
        self.root = io.data_dir(data_dir)
        self.download, self.sizes_from_files = download, not strict_sizes
        n_val = val_count(OFFICIAL_SIZES["train"])
        sizes = {"train": OFFICIAL_SIZES["train"] - n_val, "val": n_val, "test": OFFICIAL_SIZES["test"]}
        protocol = {"val": f"last {VAL_FRACTION:.0%} of the official training file ({n_val} images; BFN paper)",
                    "test": "official test file"}
        if mode == "binarized":
            protocol["binarisation"] = "dynamic: Bernoulli(pixel/255) redrawn every pass, train and test"
        source = f"{self.src['title']} idx files ({', '.join(self.src['mirrors'][:1])})"
        super().__init__(image_spec(name, mode, K, IMAGE_SHAPE, sizes, source, protocol), mode)

    def search_dirs(self) -> list[Path]:
        return [self.root / d for d in self.src["subdirs"]] + list(self.src["fallback"])

    def _names(self) -> list[tuple[str, ...]]:
        return [(f + ".gz", f) for pair in FILES.values() for f in pair]

    def locate(self) -> dict[str, Path] | None:
        """The first directory holding all four files (each gzipped or not); stat calls only."""
        for d in self.search_dirs():
            found = [io.find_file([d], names) for names in self._names()]
            if all(found):
                return {names[1]: p for names, p in zip(self._names(), found, strict=True)}
        return None

    def present(self) -> bool:
        return self.locate() is not None

    def _fetch(self) -> None:
        dest = self.root / self.src["subdirs"][0]
        for gz, md5 in self.src["md5"].items():
            if not (dest / gz).is_file():
                io.download([m + gz for m in self.src["mirrors"]], dest / gz, md5=md5)

    def _load(self) -> dict[str, np.ndarray]:
        paths = self.locate()
        if paths is None and io.download_allowed(self.download):
            self._fetch()
            paths = self.locate()
        if paths is None:
            names = [n for pair in self._names() for n in pair]
            raise io.missing_error(self._spec.name, names, self.search_dirs(),
                                   [self.src["mirrors"][0] + n for n in self.src["md5"]])
        out = {}
        for split, (img, lab) in FILES.items():
            x, _ = read_idx_pair(paths[img], paths[lab])
            want = OFFICIAL_SIZES[split]
            if not self.sizes_from_files and len(x) != want:
                raise io.corrupt(paths[img], f"{len(x)} images, the official {self.src['title']} {split} file has "
                                             f"{want}", "use the official file (or pass strict_sizes=False to accept "
                                             "a subset on purpose)")
            out[split] = x[:, None]  # (N, 1, 28, 28)
        n_val = val_count(len(out["train"]))
        if n_val >= len(out["train"]):
            raise DataError(f"{paths['train-images-idx3-ubyte']}: {len(out['train'])} training images leave none "
                            f"after holding out {n_val} for validation; provide more images")
        out["train"], out["val"] = out["train"][:-n_val], out["train"][-n_val:]
        return out


def _factory(name: str, which: str, mode: str, K: int):
    @register(name)
    def make(data_dir: Path | None = None, **options) -> MnistDataset:
        return MnistDataset(name, which, mode, K, data_dir, **options)

    return make


_factory("binarized_mnist", "mnist", "binarized", 2)
_factory("mnist_256", "mnist", "discretised", 256)
_factory("mnist_16", "mnist", "discretised", 16)
_factory("fashion_mnist_256", "fashion_mnist", "discretised", 256)
_factory("fashion_mnist_16", "fashion_mnist", "discretised", 16)
