"""CIFAR-10 from the python pickle batches, discretised to 256 or 16 bins (16 = pixel >> 4), shape (3, 32, 32).

Reads `cifar-10-python.tar.gz` (official md5 c58f30108f718f92721af3b95e74349a) or the extracted
`cifar-10-batches-py/` directory. Each batch is a pickled dict {b"data": uint8 (10000, 3072) rows of R, G, B
planes of 32x32, b"labels": 10000 ints in 0..9, ...}. Pickles are read with an unpickler that builds only
numpy arrays and plain containers, so a hostile file cannot run code.

Splits: test = test_batch; val = the last 1% of the 50,000 training images (500, as the BFN paper holds out
1% of train); train = the rest (49,500). No flips or other augmentation (BFN paper).
"""

from __future__ import annotations

import io as _bytesio
import pickle
from pathlib import Path

import numpy as np

from suite.data import io, register
from suite.data.mnist import ImageDataset, image_spec, val_count

SHAPE = (3, 32, 32)
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PER_BATCH = 10000
_ALLOWED = {  # (module, name) the unpickler may build: numpy arrays and dtypes, nothing callable beyond that
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle; only re-encodes a string
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        if module == "numpy.core.multiarray":  # pickles from numpy 1.x; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def parse_batch(buf: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images uint8 (N, 3, 32, 32), labels int64 (N,), every field validated."""
    try:
        d = _ArrayUnpickler(_bytesio.BytesIO(buf), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise io.corrupt(where, f"not a readable CIFAR-10 pickle batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise io.corrupt(where, f"a CIFAR-10 batch is a dict, this file holds a {type(d).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    lost = [k for k in ("data", "labels") if k not in d]
    if lost:
        raise io.corrupt(where, f"batch lacks the key(s) {', '.join(lost)} (has {', '.join(map(str, d))})")
    data, labels = d["data"], np.asarray(d["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise io.corrupt(where, f"'data' must be a uint8 array, got {getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise io.corrupt(where, f"'data' has shape {data.shape}, expected (N, 3072) rows of 3x32x32 pixels")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise io.corrupt(where, f"'labels' has shape {labels.shape} (dtype {labels.dtype}) for {data.shape[0]} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise io.corrupt(where, f"labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, *SHAPE), labels.astype(np.int64)


class Cifar10(ImageDataset):
    """CIFAR-10 pickle batches from the data dir (tar.gz or extracted), downloaded only when allowed."""

    def __init__(self, name: str, K: int, data_dir: Path | None = None, download: bool | None = None,
                 strict_sizes: bool = True):
        self.root, self.download, self.sizes_from_files = io.data_dir(data_dir), download, not strict_sizes
        n_val = val_count(5 * PER_BATCH)
        sizes = {"train": 5 * PER_BATCH - n_val, "val": n_val, "test": PER_BATCH}
        protocol = {"val": f"last 1% of the 50,000 training images ({n_val}; BFN paper)",
                    "test": "official test_batch", "augmentation": "none"}
        super().__init__(image_spec(name, "discretised", K, SHAPE, sizes, f"CIFAR-10 python batches ({URLS[0]})",
                                    protocol), "discretised")

    def search_dirs(self) -> list[Path]:
        return [self.root / "cifar10", self.root]

    def locate(self) -> Path | None:
        """An extracted `cifar-10-batches-py/` directory (preferred: no decompression) or the archive."""
        for d in self.search_dirs():
            folder = d / FOLDER
            if all((folder / b).is_file() for b in TRAIN_BATCHES + (TEST_BATCH,)):
                return folder
            if (d / ARCHIVE).is_file():
                return d / ARCHIVE
        return None

    def present(self) -> bool:
        return self.locate() is not None

    def _read(self, where: Path) -> dict[str, bytes]:
        names = TRAIN_BATCHES + (TEST_BATCH,)
        if where.is_dir():
            return {n: (where / n).read_bytes() for n in names}
        members = io.read_tar_members(where, [f"{FOLDER}/{n}" for n in names])
        return {n: members[f"{FOLDER}/{n}"] for n in names}

    def _load(self) -> dict[str, np.ndarray]:
        where = self.locate()
        if where is None and io.download_allowed(self.download):
            io.download(URLS, self.search_dirs()[0] / ARCHIVE, md5=ARCHIVE_MD5)
            where = self.locate()
        if where is None:
            raise io.missing_error(self._spec.name, [ARCHIVE, f"{FOLDER}/"], self.search_dirs(), URLS,
                                   f"(md5 of the archive: {ARCHIVE_MD5})")
        raw = self._read(where)
        parts = {}
        for n, buf in raw.items():
            label = f"{where}/{n}" if where.is_dir() else f"{where}:{FOLDER}/{n}"
            x, _ = parse_batch(buf, label)
            if not self.sizes_from_files and len(x) != PER_BATCH:
                raise io.corrupt(label, f"{len(x)} images, an official CIFAR-10 batch has {PER_BATCH}",
                                 "use the official archive (or pass strict_sizes=False to accept a subset on purpose)")
            parts[n] = x
        train = np.concatenate([parts[n] for n in TRAIN_BATCHES])
        n_val = val_count(len(train))
        if n_val >= len(train):
            raise io.corrupt(where, f"{len(train)} training images leave none after holding out {n_val} for validation")
        return {"train": train[:-n_val], "val": train[-n_val:], "test": parts[TEST_BATCH]}


for _K in (256, 16):
    register(f"cifar10_{_K}")(lambda data_dir=None, _K=_K, **o: Cifar10(f"cifar10_{_K}", _K, data_dir, **o))
