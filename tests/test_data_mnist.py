"""MNIST / Fashion-MNIST loaders on idx files the tests write: values, splits, dynamic binarisation, bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from data_writers import MNIST_NAMES, idx_bytes, md5, write_file, write_mnist

from suite.data import get_dataset, io
from suite.data import mnist as mnist_mod


def _ds(name, d, **kw):
    return get_dataset(name, d, strict_sizes=False, **kw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_exactly_with_the_documented_split(tmp_path, gz):
    """idx format (magic 0x00000803 / 0x00000801, big-endian dims): pixels read back exactly; val = the last 1%
    of the training file (BFN paper), train = the rest, test = the test file."""
    truth = write_mnist(tmp_path / "mnist", n_train=200, n_test=30, gz=gz)
    ds = _ds("mnist_256", tmp_path)
    assert ds.spec.split_sizes == {"train": 198, "val": 2, "test": 30}
    assert np.array_equal(ds.examples("train")[:, 0].numpy(), truth["train"][:198])
    assert np.array_equal(ds.examples("val")[:, 0].numpy(), truth["train"][198:])
    assert np.array_equal(ds.examples("test")[:, 0].numpy(), truth["test"])


def test_official_spec_before_loading():
    """Constructing reads nothing; the spec carries the official sizes (60000 -> 59400 / 600, 10000 test)."""
    ds = get_dataset("binarized_mnist", "/nonexistent/dir")
    assert ds.spec.split_sizes == {"train": 59400, "val": 600, "test": 10000}
    assert ds.spec.kind == "discrete" and ds.spec.K == 2 and ds.spec.shape == (1, 28, 28)
    assert not ds.present()
    assert "1%" in ds.spec.protocol["val"]


@pytest.mark.parametrize("K", [256, 16])
def test_discretised_values_are_bin_centres(tmp_path, K):
    """Bin k = pixel * K // 256 (16 bins: pixel >> 4), value (2k + 1)/K - 1 (DataSpec bin centres, BFN s.5)."""
    truth = write_mnist(tmp_path, n_train=100, n_test=10)
    ds = _ds(f"mnist_{K}", tmp_path)
    x = torch.cat(list(ds.batches("test", 4)))
    pix = truth["test"][:, None].astype(np.int64)
    k = pix >> 4 if K == 16 else pix
    assert x.dtype == torch.float32
    assert np.allclose(x.numpy(), (2 * k + 1) / K - 1, atol=1e-7)
    assert torch.all(torch.isin(x, ds.spec.bin_centres.float()))


def test_dynamic_binarisation_is_bernoulli_per_pass_and_reproducible(tmp_path):
    """x ~ Bernoulli(pixel/255) redrawn on every pass (BFN paper's dynamic binarisation), train and test:
    same seed and epoch -> identical; another epoch or seed -> different; pixels 0 / 255 always give 0 / 1;
    over 40 passes the mean of all bits matches the mean of pixel/255 within 5 s.e. (s.e. =
    sqrt(sum p(1 - p)) / count, the bits being independent)."""
    truth = write_mnist(tmp_path, n_train=100, n_test=20)
    ds = _ds("binarized_mnist", tmp_path)
    for split in ("train", "test"):
        a = torch.cat(list(ds.batches(split, 8, seed=5, epoch=0, shuffle=False, drop_last=False)))
        b = torch.cat(list(ds.batches(split, 8, seed=5, epoch=0, shuffle=False, drop_last=False)))
        c = torch.cat(list(ds.batches(split, 8, seed=5, epoch=1, shuffle=False, drop_last=False)))
        d = torch.cat(list(ds.batches(split, 8, seed=6, epoch=0, shuffle=False, drop_last=False)))
        assert a.dtype == torch.int64 and set(a.unique().tolist()) <= {0, 1}
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    p = torch.from_numpy(truth["test"][:, None]).double() / 255
    passes = torch.stack([torch.cat(list(ds.batches("test", 7, seed=0, epoch=e, shuffle=False))) for e in range(40)])
    assert torch.all(passes[:, p == 0] == 0) and torch.all(passes[:, p == 1] == 1)
    se = math.sqrt(40 * (p * (1 - p)).sum().item()) / passes.numel()
    assert abs(passes.double().mean().item() - p.mean().item()) < 5 * se


def test_batches_cover_eval_split_once_and_shard_disjointly(tmp_path):
    """Val/test: one pass yields every example exactly once, in order; ranks get disjoint interleaved shards
    whose union is the split (Dataset.batches contract)."""
    write_mnist(tmp_path, n_train=100, n_test=23)
    ds = _ds("mnist_256", tmp_path)
    full = torch.cat(list(ds.batches("test", 5)))
    assert torch.equal(full, torch.cat(list(ds.batches("test", 5))))
    assert len(full) == 23
    shards = [torch.cat(list(ds.batches("test", 4, rank=r, world_size=3))) for r in range(3)]
    assert sum(len(s) for s in shards) == 23
    for r in range(3):
        assert torch.equal(shards[r], full[r::3])
    train = list(ds.batches("train", 16, seed=1))  # drops the ragged last batch
    assert all(len(b) == 16 for b in train) and len(train) == 99 // 16


def test_missing_files_message_says_what_and_how(tmp_path, monkeypatch):
    """A missing data set names the files, the directories searched, and the three ways to provide them."""
    monkeypatch.delenv("BFNBENCH_DOWNLOAD", raising=False)
    ds = get_dataset("mnist_16", tmp_path)
    with pytest.raises(io.MissingDataError) as e:
        ds.examples("train")
    msg = str(e.value)
    for part in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte", str(tmp_path), "--data-dir",
                 "BFNBENCH_DATA_DIR", "download=True", "BFNBENCH_DOWNLOAD=1"):
        assert part in msg


def test_truncated_gzip(tmp_path):
    """A gzip cut short is reported as truncated, naming the file and the fix."""
    write_mnist(tmp_path, n_train=100, n_test=10)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    pattern = r"train-images-idx3-ubyte\.gz: truncated or corrupt gzip.*re-download"
    with pytest.raises(io.CorruptDataError, match=pattern):
        _ds("mnist_256", tmp_path).examples("test")


@pytest.mark.parametrize("which,forge,pattern", [
    ("images", dict(magic=b"\x00\x00\x08\x02"), "bad idx magic number 0x00000802"),
    ("images", dict(magic=b"\x00\x00\x0d\x03"), "bad idx magic"),
    ("images", dict(dims=(11, 28, 28)), "header says 11x28x28 = 8624 bytes.*holds 7840"),
    ("labels", dict(dims=(12,)), "header says 12 = 12 bytes.*holds 10"),
])
def test_corrupt_idx_header(tmp_path, which, forge, pattern):
    """Corrupt idx headers (wrong magic, count that disagrees with the data) are caught and named."""
    truth = write_mnist(tmp_path, n_train=100, n_test=10, gz=False)
    arr = truth["test"] if which == "images" else truth["test_labels"]
    name = MNIST_NAMES["test"][0 if which == "images" else 1]
    write_file(tmp_path / name, idx_bytes(arr, **forge), gz=False)
    with pytest.raises(io.CorruptDataError, match=pattern) as e:
        _ds("mnist_256", tmp_path).examples("test")
    assert name in str(e.value)


def test_images_and_labels_must_agree(tmp_path):
    """An images file and a labels file with different counts do not belong together."""
    truth = write_mnist(tmp_path, n_train=100, n_test=10)
    write_file(tmp_path / MNIST_NAMES["test"][1], idx_bytes(truth["test_labels"][:9]), gz=True)
    with pytest.raises(io.CorruptDataError, match="10 images but t10k-labels-idx1-ubyte.gz holds 9 labels"):
        _ds("mnist_256", tmp_path).examples("test")


def test_official_sizes_are_enforced_by_default(tmp_path):
    """Without strict_sizes=False a file with the wrong number of images is rejected (a truncated download or
    another data set), so a subset can never pass silently as MNIST."""
    write_mnist(tmp_path, n_train=100, n_test=10)
    with pytest.raises(io.CorruptDataError, match="100 images, the official MNIST train file has 60000"):
        get_dataset("mnist_256", tmp_path).examples("train")


def _file_mirror(monkeypatch, tmp_path, which="mnist", bad_md5=False):
    """Serve test-written files from a file:// mirror with their real md5s (or a wrong one)."""
    srv = tmp_path / "server"
    write_mnist(srv, n_train=100, n_test=10)
    sums = {f.name: ("0" * 32 if bad_md5 and "t10k-images" in f.name else md5(f)) for f in srv.iterdir()}
    src = dict(mnist_mod.SOURCES[which], mirrors=(srv.as_uri() + "/",), md5=sums)
    monkeypatch.setitem(mnist_mod.SOURCES, which, src)
    return srv


def test_download_verifies_md5_and_lands_atomically(tmp_path, monkeypatch):
    """download=True fetches each file (here from a file:// mirror), checks its md5 and renames it into
    <data_dir>/mnist; without consent nothing is fetched."""
    monkeypatch.delenv("BFNBENCH_DOWNLOAD", raising=False)
    _file_mirror(monkeypatch, tmp_path)
    root = tmp_path / "data"
    with pytest.raises(io.MissingDataError):
        _ds("mnist_256", root).examples("test")
    assert not (root / "mnist").exists()
    ds = _ds("mnist_256", root, download=True)
    assert len(ds.examples("test")) == 10
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(mnist_mod.SOURCES["mnist"]["md5"])
    monkeypatch.setenv("BFNBENCH_DOWNLOAD", "1")  # the environment gives consent too
    assert len(_ds("mnist_16", tmp_path / "data2").examples("test")) == 10


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    """A download whose md5 differs from the official one is deleted and reported: expected vs actual, fix."""
    _file_mirror(monkeypatch, tmp_path, bad_md5=True)
    root = tmp_path / "data"
    with pytest.raises(io.ChecksumError) as e:
        _ds("mnist_256", root, download=True).examples("test")
    msg = str(e.value)
    assert "expected md5 " + "0" * 32 in msg and "got " in msg and "re-download" in msg and "t10k-images" in msg
    assert not (root / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in (root / "mnist").iterdir())


def test_download_without_network_says_so(tmp_path, monkeypatch):
    """An unreachable mirror gives a MissingDataError naming the URL and where to put the file by hand."""
    src = dict(mnist_mod.SOURCES["mnist"], mirrors=((tmp_path / "nowhere").as_uri() + "/",))
    monkeypatch.setitem(mnist_mod.SOURCES, "mnist", src)
    with pytest.raises(io.MissingDataError, match="could not download train-images-idx3-ubyte.gz.*network"):
        get_dataset("mnist_256", tmp_path / "d", download=True).examples("test")


def test_data_dir_resolution(tmp_path, monkeypatch):
    """Explicit data_dir, else $BFNBENCH_DATA_DIR, else ~/.cache/bfnbench/data."""
    monkeypatch.setenv("BFNBENCH_DATA_DIR", str(tmp_path / "env"))
    assert io.data_dir(tmp_path / "x") == tmp_path / "x"
    assert io.data_dir() == tmp_path / "env"
    write_mnist(tmp_path / "env" / "mnist", n_train=100, n_test=10)
    assert get_dataset("mnist_256").present() and len(_ds("mnist_256", None).examples("test")) == 10
    monkeypatch.delenv("BFNBENCH_DATA_DIR")
    assert io.data_dir() == Path("~/.cache/bfnbench/data").expanduser()


def test_fashion_lookup_and_debian_fallback(tmp_path, monkeypatch):
    """Fashion-MNIST is read from <data_dir>/fashion-mnist, else from Debian's dataset-fashion-mnist location;
    it never picks up MNIST files lying loose in the data dir (same file names)."""
    write_mnist(tmp_path / "data", n_train=100, n_test=10, seed=0)  # loose MNIST files
    deb = tmp_path / "deb"
    fashion = write_mnist(deb, n_train=100, n_test=10, seed=7)
    monkeypatch.setitem(mnist_mod.SOURCES, "fashion_mnist", dict(mnist_mod.SOURCES["fashion_mnist"], fallback=(deb,)))
    ds = _ds("fashion_mnist_256", tmp_path / "data")
    assert ds.present()
    assert np.array_equal(ds.examples("test")[:, 0].numpy(), fashion["test"])


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
def test_real_debian_fashion_mnist(tmp_path):
    """The real Fashion-MNIST files of Debian's package load with the official sizes (60000 / 10000)."""
    ds = get_dataset("fashion_mnist_16", tmp_path)
    assert ds.present()
    assert ds.num_examples("train") == 59400 and ds.num_examples("val") == 600 and ds.num_examples("test") == 10000
    x = next(ds.batches("test", 64))
    assert x.shape == (64, 1, 28, 28) and len(x.unique()) > 8
