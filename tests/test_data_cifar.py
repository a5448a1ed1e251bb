"""CIFAR-10 loader on pickle batches the tests write (tar.gz and extracted): values, splits, bad input."""

import os
import pickle

import numpy as np
import pytest
import torch
from data_writers import cifar_batch_bytes, md5, random_images, write_cifar

from suite.data import cifar as cifar_mod
from suite.data import get_dataset, io


def _ds(name, d, **kw):
    return get_dataset(name, d, strict_sizes=False, **kw)


@pytest.mark.parametrize("archive", [True, False])
def test_batches_load_exactly_with_the_documented_split(tmp_path, archive):
    """Rows of 3072 bytes are R, G, B planes of 32x32 (CIFAR-10 python format): read back exactly as (3, 32, 32);
    val = last 1% of the 5 training batches (BFN paper), test = test_batch."""
    truth = write_cifar(tmp_path, n_per_batch=40, archive=archive)
    ds = _ds("cifar10_256", tmp_path)
    assert ds.spec.split_sizes == {"train": 198, "val": 2, "test": 40}
    assert np.array_equal(ds.examples("train").numpy(), truth["train_all"][:198])
    assert np.array_equal(ds.examples("val").numpy(), truth["train_all"][198:])
    assert np.array_equal(ds.examples("test").numpy(), truth["test"])


def test_extracted_folder_is_preferred_and_official_spec():
    """Before loading, the spec has the official sizes 49,500 / 500 / 10,000 and shape (3, 32, 32)."""
    ds = get_dataset("cifar10_16", "/nonexistent")
    assert ds.spec.split_sizes == {"train": 49500, "val": 500, "test": 10000}
    assert ds.spec.shape == (3, 32, 32) and ds.spec.K == 16 and ds.spec.kind == "discretised"
    assert not ds.present()


@pytest.mark.parametrize("K", [256, 16])
def test_values_are_bin_centres(tmp_path, K):
    """Bin k = pixel * K // 256 (16 bins = pixel >> 4), value (2k + 1)/K - 1."""
    truth = write_cifar(tmp_path, n_per_batch=8)
    x = torch.cat(list(_ds(f"cifar10_{K}", tmp_path).batches("test", 3)))
    k = truth["test"].astype(np.int64) >> (0 if K == 256 else 4)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert np.allclose(x.numpy(), (2 * k + 1) / K - 1, atol=1e-7)


def test_official_sizes_are_enforced_by_default(tmp_path):
    """A batch without 10,000 images is rejected unless strict_sizes=False."""
    write_cifar(tmp_path, n_per_batch=8)
    with pytest.raises(io.CorruptDataError, match="8 images, an official CIFAR-10 batch has 10000"):
        get_dataset("cifar10_256", tmp_path).examples("test")


def test_missing(tmp_path, monkeypatch):
    """Names the archive and folder, the directories searched, the ways to provide them and the md5."""
    monkeypatch.delenv("BFNBENCH_DOWNLOAD", raising=False)
    with pytest.raises(io.MissingDataError) as e:
        get_dataset("cifar10_256", tmp_path).examples("train")
    msg = str(e.value)
    for part in ("cifar-10-python.tar.gz", "cifar-10-batches-py", str(tmp_path), "--data-dir", "BFNBENCH_DATA_DIR",
                 "download=True", cifar_mod.ARCHIVE_MD5):
        assert part in msg


def test_truncated_archive(tmp_path):
    """A tar.gz cut short is reported as truncated or corrupt, naming the archive."""
    write_cifar(tmp_path, n_per_batch=200)
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    pattern = r"cifar-10-python\.tar\.gz: (truncated or corrupt tar|tar archive lacks)"
    with pytest.raises(io.CorruptDataError, match=pattern):
        _ds("cifar10_256", tmp_path).examples("test")


def _bad(tmp_path, blob):
    write_cifar(tmp_path, n_per_batch=6, archive=False, overrides={"data_batch_3": blob})
    return _ds("cifar10_256", tmp_path)


def test_batch_with_missing_key(tmp_path):
    """A batch without b'labels' names the batch file and the missing key."""
    blob = cifar_batch_bytes(random_images(6, (3072,), 0), [1] * 6, drop=("labels",))
    with pytest.raises(io.CorruptDataError, match="data_batch_3: batch lacks the key.s. labels"):
        _bad(tmp_path, blob).examples("train")


@pytest.mark.parametrize("data,pattern", [
    (np.zeros((6, 3, 32, 32), np.uint8), r"'data' has shape \(6, 3, 32, 32\), expected \(N, 3072\)"),
    (np.zeros((6, 3000), np.uint8), r"'data' has shape \(6, 3000\)"),
    (np.zeros((6, 3072), np.float32), "'data' must be a uint8 array, got float32"),
])
def test_batch_with_wrong_shape_or_dtype(tmp_path, data, pattern):
    """Wrong shapes and dtypes in a batch are caught and named."""
    with pytest.raises(io.CorruptDataError, match=pattern):
        _bad(tmp_path, cifar_batch_bytes(data, [0] * 6)).examples("train")


def test_labels_disagreeing_with_images(tmp_path):
    with pytest.raises(io.CorruptDataError, match="'labels' has shape .5,. .* for 6 images"):
        _bad(tmp_path, cifar_batch_bytes(random_images(6, (3072,), 0), [0] * 5)).examples("train")


def test_pickle_cannot_run_code(tmp_path):
    """The unpickler builds arrays only: a pickle that would call os.system is refused, not executed."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with pytest.raises(io.CorruptDataError, match="refusing to load"):
        _bad(tmp_path, pickle.dumps({b"data": Evil(), b"labels": []})).examples("train")
    assert not (tmp_path / "pwned").exists()


def test_download_md5(tmp_path, monkeypatch):
    """download=True fetches the archive (here from a file:// URL) and checks its md5: a good archive loads,
    a mismatch reports expected vs actual and leaves no file behind."""
    srv = tmp_path / "srv"
    write_cifar(srv, n_per_batch=6)
    archive = srv / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar_mod, "URLS", (archive.as_uri(),))
    monkeypatch.setattr(cifar_mod, "ARCHIVE_MD5", "f" * 32)
    with pytest.raises(io.ChecksumError, match=f"expected md5 {'f' * 32}, got {md5(archive)}"):
        _ds("cifar10_256", tmp_path / "a", download=True).examples("test")
    assert not list((tmp_path / "a").rglob("*.tar.gz*"))
    monkeypatch.setattr(cifar_mod, "ARCHIVE_MD5", md5(archive))
    assert len(_ds("cifar10_256", tmp_path / "b", download=True).examples("test")) == 6
    assert (tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz").is_file()
