"""text8 loader and `TextCorpusDataset`: alphabet, contiguous splits, crop / stride protocols, bad input."""

import numpy as np
import pytest
import torch
from data_writers import random_text, write_text8
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.data import get_dataset, io
from suite.data import text8 as text8_mod
from suite.data.text8 import ALPHABET, decode, encode

SPLITS = (3000, 400, 300)


@given(st.text(alphabet=ALPHABET, max_size=300))
@settings(max_examples=60, deadline=None)
def test_encode_decode_roundtrip(s):
    """Class 0 = space, 1..26 = a..z (text8's alphabet order); decode(encode(s)) = s."""
    codes = encode(s.encode(), "x")
    assert codes.dtype == np.uint8 and (len(s) == 0 or codes.max() <= 26)
    assert decode(codes) == s
    assert all(codes[i] == ALPHABET.index(c) for i, c in enumerate(s))


def _text8(tmp_path, as_zip=True, **kw):
    text = random_text(sum(SPLITS), seed=1)
    write_text8(tmp_path, text, as_zip=as_zip)
    return text, get_dataset("text8", tmp_path, splits=SPLITS, **kw)


@pytest.mark.parametrize("as_zip", [True, False])
def test_contiguous_splits_and_stride_windows(tmp_path, as_zip):
    """Splits are contiguous train | val | test; with stride S the eval windows start at 0, S, 2S, ...,
    (n - L) // S + 1 of them, each the exact slice of the split's text."""
    text, ds = _text8(tmp_path, as_zip, seq_len=64, stride=50)
    assert decode(ds.corpus("val")) == text[3000:3400] and decode(ds.corpus("test")) == text[3400:]
    n_val = (400 - 64) // 50 + 1
    assert ds.spec.split_sizes["val"] == n_val == ds.num_examples("val")
    windows = torch.cat(list(ds.batches("val", 3)))
    assert windows.dtype == torch.int64 and windows.shape == (n_val, 64)
    for i, w in enumerate(windows):
        assert decode(w) == text[3000 + 50 * i : 3000 + 50 * i + 64]
    assert torch.equal(ds.examples("val").long(), windows)
    assert "stride 50" in ds.spec.protocol["val"] and ds.spec.protocol["seq_len"] == "64"


def test_stride_one_is_every_window(tmp_path):
    """stride=1 (the BFN paper's text8 protocol): n - L + 1 windows, every start once."""
    _, ds = _text8(tmp_path, seq_len=256, stride=1)
    assert ds.spec.split_sizes["test"] == 300 - 256 + 1
    starts = ds.starts("test")
    assert torch.equal(starts, torch.arange(45))


def test_default_stride_scores_each_character_once(tmp_path):
    """Default stride = seq_len: windows tile the split; the tail shorter than a window is recorded."""
    _, ds = _text8(tmp_path, seq_len=64)
    assert ds.spec.split_sizes["val"] == 400 // 64
    assert "last 16 characters unscored" in ds.spec.protocol["val"]
    s = ds.starts("val")
    assert torch.equal(s, torch.arange(0, 6 * 64, 64))


def test_train_random_crops(tmp_path):
    """Train: `train_crops` random crops per pass (default n // L), start uniform on [0, n - L], a function of
    (seed, epoch): same pass -> same crops; another epoch or seed -> different. Each crop equals the text there.
    Uniformity: mean start within 5 s.e. of (n - L)/2 (s.e. = sqrt(((n-L+1)^2 - 1)/12 / count))."""
    text, ds = _text8(tmp_path, seq_len=32, train_crops=4000)
    assert ds.spec.split_sizes["train"] == 4000
    assert get_dataset("text8", tmp_path, splits=SPLITS, seq_len=32).spec.split_sizes["train"] == 3000 // 32
    a, b = ds.starts("train", 1, 0), ds.starts("train", 1, 0)
    assert torch.equal(a, b)
    assert not torch.equal(a, ds.starts("train", 1, 1)) and not torch.equal(a, ds.starts("train", 2, 0))
    assert a.min() >= 0 and a.max() <= 3000 - 32
    m = 3000 - 32
    se = (((m + 1) ** 2 - 1) / 12 / len(a)) ** 0.5
    assert abs(a.double().mean().item() - m / 2) < 5 * se
    batch = next(ds.batches("train", 5, seed=1, epoch=0, shuffle=False))
    for w, s in zip(batch, a[:5], strict=True):
        assert decode(w) == text[int(s) : int(s) + 32]


def test_eval_random_crops_are_fixed_across_runs(tmp_path):
    """eval_crops=N: the val/test crops depend only on crop_seed (every method, run and seed sees the same
    windows); the protocol records the count and crop_seed."""
    _, ds = _text8(tmp_path, seq_len=32, eval_crops=50, crop_seed=3)
    a = torch.cat(list(ds.batches("test", 7, seed=0)))
    b = torch.cat(list(ds.batches("test", 7, seed=9, epoch=4)))
    assert a.shape == (50, 32) and torch.equal(a, b)
    assert ds.spec.protocol["test"] == "random crops, 50 fixed by crop_seed=3"
    other = get_dataset("text8", tmp_path, splits=SPLITS, seq_len=32, eval_crops=50, crop_seed=4)
    assert not torch.equal(ds.starts("test"), other.starts("test"))


def test_batches_shard_disjointly_and_cover_once(tmp_path):
    """Ranks get disjoint interleaved shards of the eval windows whose union is the whole pass."""
    _, ds = _text8(tmp_path, seq_len=16, stride=7)
    full = torch.cat(list(ds.batches("val", 10)))
    shards = [torch.cat(list(ds.batches("val", 4, rank=r, world_size=2))) for r in range(2)]
    assert torch.equal(shards[0], full[0::2]) and torch.equal(shards[1], full[1::2])
    assert sum(map(len, shards)) == len(full) == (400 - 16) // 7 + 1


def test_characters_outside_the_alphabet(tmp_path):
    """Text with characters outside ' a-z' is refused: the error names the file, the characters, their offsets
    and what to do."""
    text = list(random_text(sum(SPLITS), seed=2))
    text[10], text[2000] = "A", "\n"
    write_text8(tmp_path, "".join(text), as_zip=False)
    with pytest.raises(io.CorruptDataError) as e:
        get_dataset("text8", tmp_path, splits=SPLITS).examples("test")
    msg = str(e.value)
    assert str(tmp_path / "text8") in msg and "2 character(s) outside" in msg
    assert "'A' at 10" in msg and "'\\n' at 2000" in msg and "lowercase" in msg
    with pytest.raises(io.CorruptDataError, match="byte 0xc3 at 1"):
        encode("aé".encode(), "f")


def test_wrong_length_and_truncated_zip(tmp_path):
    """A file whose length disagrees with the splits (text8: exactly 100,000,000) and a truncated zip are
    each reported with the file and the fix."""
    write_text8(tmp_path, random_text(1000), as_zip=True)
    with pytest.raises(io.CorruptDataError, match=r"text8.zip:text8: 1,000 characters, but the splits .* need 3,700"):
        get_dataset("text8", tmp_path, splits=SPLITS).examples("val")
    with pytest.raises(io.CorruptDataError, match="need 100,000,000"):
        get_dataset("text8", tmp_path).examples("val")
    p = tmp_path / "text8.zip"
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(io.CorruptDataError, match=r"text8\.zip: truncated or corrupt zip archive"):
        get_dataset("text8", tmp_path, splits=SPLITS).examples("val")


def test_missing_and_official_spec(tmp_path, monkeypatch):
    """Default spec: 90M / 5M / 5M characters, seq_len 256, K = 27; missing files named with the fixes."""
    monkeypatch.delenv("BFNBENCH_DOWNLOAD", raising=False)
    ds = get_dataset("text8", tmp_path)
    assert ds.spec.K == 27 and ds.spec.shape == (256,)
    assert ds.spec.split_sizes == {"train": 90_000_000 // 256, "val": (5_000_000 - 256) // 256 + 1,
                                   "test": (5_000_000 - 256) // 256 + 1}
    assert "90,000,000 / 5,000,000 / 5,000,000" in ds.spec.protocol["split"]
    assert not ds.present()
    with pytest.raises(io.MissingDataError) as e:
        ds.examples("val")
    for part in ("text8, text8.zip", str(tmp_path), "--data-dir", "BFNBENCH_DATA_DIR", "download=True"):
        assert part in str(e.value)


def test_download_md5(tmp_path, monkeypatch):
    """download=True fetches text8.zip (a file:// URL here), verifies its md5 and reads it; a mismatch is
    reported with expected and actual digests."""
    srv = write_text8(tmp_path / "srv", random_text(sum(SPLITS)))
    monkeypatch.setattr(text8_mod, "TEXT8_URLS", (srv.as_uri(),))
    monkeypatch.setattr(text8_mod, "TEXT8_ZIP_MD5", "0" * 32)
    with pytest.raises(io.ChecksumError, match="expected md5 0{32}, got"):
        get_dataset("text8", tmp_path / "a", splits=SPLITS, download=True).examples("val")
    monkeypatch.setattr(text8_mod, "TEXT8_ZIP_MD5", io.file_digest(srv))
    assert len(get_dataset("text8", tmp_path / "b", splits=SPLITS, download=True).examples("test")) == 300 // 256


def test_bad_options():
    """Impossible protocol options get a clear error."""
    for kw, pat in [(dict(seq_len=0), "seq_len"), (dict(stride=0), "stride"), (dict(eval_crops=0), "eval_crops"),
                    (dict(stride=4, eval_crops=4), "not both"), (dict(splits=(1, 2)), "splits")]:
        with pytest.raises(ValueError, match=pat):
            get_dataset("text8", "/nowhere", **kw)
