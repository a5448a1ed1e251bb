"""Embedded data shipped in the package: the real assets, and files in the same formats with bad contents."""

import hashlib
import json

import numpy as np
import pytest
import torch
from data_writers import random_text, write_embedded_mnist, write_embedded_text

from suite.data import get_dataset, io
from suite.data.embedded import MNIST_ASSET, TEXT_ASSET
from suite.data.text8 import ALPHABET, decode


def test_npz_format_splits_and_values(tmp_path):
    """mnist_npm_10k format: images/labels/split uint8; split 0/1/2 = train/val/test; discretised values are
    the bin centres of the stored pixels, binarised values 0/1 that change between passes."""
    p = tmp_path / "m.npz"
    arr = write_embedded_mnist(p, sizes=(30, 5, 7))
    ds = get_dataset("mnist_embedded_16", path=p, strict_sizes=False)
    assert ds.spec.split_sizes == {"train": 30, "val": 5, "test": 7}
    for i, s in enumerate(("train", "val", "test")):
        assert np.array_equal(ds.examples(s)[:, 0].numpy(), arr["images"][arr["split"] == i])
    x = torch.cat(list(ds.batches("test", 3)))
    k = arr["images"][arr["split"] == 2][:, None].astype(np.int64) >> 4
    assert np.allclose(x.numpy(), (2 * k + 1) / 16 - 1, atol=1e-7)
    b = get_dataset("mnist_embedded_binarized", path=p, strict_sizes=False)
    e0 = torch.cat(list(b.batches("val", 5, seed=1, epoch=0)))
    assert set(e0.unique().tolist()) <= {0, 1}
    assert torch.equal(e0, torch.cat(list(b.batches("val", 5, seed=1, epoch=0))))
    assert not torch.equal(e0, torch.cat(list(b.batches("val", 5, seed=1, epoch=1))))


@pytest.mark.parametrize("replace,pattern", [
    (dict(split=None), "npz lacks the array.s. split"),
    (dict(labels=np.zeros(100, np.int64)), "'labels' has dtype int64, expected uint8"),
    (dict(images=np.zeros((100, 28, 27), np.uint8)), r"'images' has shape \(100, 28, 27\)"),
    (dict(split=np.full(100, 3, np.uint8)), "'split' holds 3"),
    (dict(labels=np.zeros(99, np.uint8)), r"'labels' \(99,\) and 'split' \(100,\) must both be \(100,\)"),
])
def test_npz_bad_contents(tmp_path, replace, pattern):
    """Missing arrays, wrong dtypes, shapes and split codes are named with the file and the fix."""
    p = tmp_path / "m.npz"
    write_embedded_mnist(p, sizes=(80, 10, 10), **replace)
    with pytest.raises(io.CorruptDataError, match=pattern) as e:
        get_dataset("mnist_embedded_256", path=p, strict_sizes=False).examples("train")
    assert str(p) in str(e.value) and "build_embedded_assets.py" in str(e.value)


def test_npz_truncated_missing_and_wrong_sizes(tmp_path):
    p = tmp_path / "m.npz"
    write_embedded_mnist(p)
    with pytest.raises(io.CorruptDataError, match=r"split sizes \{'train': 80, 'val': 10, 'test': 10\}, the shipped"):
        get_dataset("mnist_embedded_256", path=p).examples("train")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(io.CorruptDataError, match="truncated or corrupt npz"):
        get_dataset("mnist_embedded_256", path=p).examples("train")
    with pytest.raises(io.MissingDataError, match="embedded asset .*nope.npz is missing"):
        get_dataset("mnist_embedded_256", path=tmp_path / "nope.npz").examples("train")
    assert not get_dataset("mnist_embedded_256", path=tmp_path / "nope.npz").present()


def test_text_format_and_protocol(tmp_path):
    """shakespeare_text8 format: xz text + JSON split sizes; contiguous splits; same protocol options as text8."""
    text = random_text(2000, seed=4)
    p = write_embedded_text(tmp_path, text + "\n", {"train": 1600, "val": 200, "test": 200})  # trailing newline ok
    ds = get_dataset("text_embedded", text_path=p, seq_len=50, stride=25)
    assert ds.spec.stand_in_for == "text8" and ds.spec.K == 27 and ds.spec.shape == (50,)
    assert decode(ds.corpus("test")) == text[1800:]
    assert ds.spec.split_sizes["val"] == (200 - 50) // 25 + 1
    w = next(ds.batches("val", 2))
    assert decode(w[1]) == text[1625:1675]


def test_text_bad_inputs(tmp_path):
    """Characters outside the alphabet, a checksum mismatch, sizes that disagree with the text, a broken JSON."""
    bad = write_embedded_text(tmp_path / "a", "hello World", {"train": 5, "val": 3, "test": 3})
    with pytest.raises(io.CorruptDataError, match=r"a/corpus.txt.xz: 1 character.s. outside .* 'W' at 6"):
        get_dataset("text_embedded", text_path=bad, seq_len=2).examples("train")
    p = write_embedded_text(tmp_path / "b", "abc def gh", {"train": 6, "val": 2, "test": 2})
    meta = json.loads((tmp_path / "b" / "corpus.json").read_text())
    (tmp_path / "b" / "corpus.json").write_text(json.dumps(dict(meta, sha256_uncompressed="1" * 64)))
    with pytest.raises(io.ChecksumError, match="expected sha256 1{64}"):
        get_dataset("text_embedded", text_path=p, seq_len=2).examples("train")
    p = write_embedded_text(tmp_path / "c", "abc def gh", {"train": 6, "val": 2, "test": 3})
    with pytest.raises(io.CorruptDataError, match="holds 10 characters but the splits 6 / 2 / 3 need 11"):
        get_dataset("text_embedded", text_path=p, seq_len=2).examples("train")
    (tmp_path / "c" / "corpus.json").write_text('{"split": {}}')
    with pytest.raises(io.CorruptDataError, match="not a valid split file"):
        _ = get_dataset("text_embedded", text_path=p, seq_len=2).spec
    xz = tmp_path / "c" / "corpus.txt.xz"
    write_embedded_text(tmp_path / "c", "abc def gh", {"train": 6, "val": 2, "test": 2})
    xz.write_bytes(xz.read_bytes()[:-8])
    with pytest.raises(io.CorruptDataError, match="truncated or corrupt xz"):
        get_dataset("text_embedded", text_path=xz, seq_len=2).examples("train")


def test_real_mnist_asset():
    """The shipped 10,000 npm digits: 8000 / 1000 / 1000, every digit class in every split, real digit
    statistics (about 19% of pixels above 127, as in MNIST), stand-ins labelled."""
    ds = get_dataset("mnist_embedded_256")
    assert ds.present() and ds.spec.stand_in_for == "mnist"
    assert get_dataset("mnist_embedded_binarized").spec.stand_in_for == "binarized_mnist"
    assert {s: ds.num_examples(s) for s in ("train", "val", "test")} == {"train": 8000, "val": 1000, "test": 1000}
    with np.load(MNIST_ASSET) as z:
        for i in range(3):
            assert len(np.unique(z["labels"][z["split"] == i])) == 10
    frac = (ds.examples("train") > 127).double().mean().item()
    assert 0.1 < frac < 0.3


def test_real_text_asset():
    """The shipped Shakespeare: sizes from its JSON, its sha256 verified on load, English text (space the most
    common character, 'e' the most common letter)."""
    ds = get_dataset("text_embedded")
    meta = json.loads(TEXT_ASSET.with_name("shakespeare_text8.json").read_text())
    assert ds.split_chars() == meta["splits"]
    corpus = torch.cat([ds.corpus(s) for s in ("train", "val", "test")])
    counts = torch.bincount(corpus.long(), minlength=27)
    assert counts.argmax() == 0 and counts[1:].argmax() + 1 == ALPHABET.index("e")
    assert hashlib.sha256(decode(corpus).encode()).hexdigest() == meta["sha256_uncompressed"]
    assert next(ds.batches("test", 2)).shape == (2, 256)
