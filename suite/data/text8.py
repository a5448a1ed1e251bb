"""text8 (K = 27 characters) and `TextCorpusDataset`, the reusable part for any text cleaned the text8 way.

Classes: 0 = space, 1..26 = a..z (text8's alphabet order " abcdefghijklmnopqrstuvwxyz").
Splits: contiguous, in the order train / val / test: text8's 90M / 5M / 5M characters (BFN paper, MATH.md s.6).

Sequences of `seq_len` characters (default 256, the BFN paper's). The protocol is explicit and recorded in
`spec.protocol`:
  train      random crops, `train_crops` per pass (default n_train // seq_len, about one corpus's worth of
             characters), starts uniform on [0, n - seq_len], drawn from (run seed, epoch)
  val/test   either windows with a stride (`stride=`; default seq_len, so each character is scored once and the
             last (n - seq_len) % stride characters are not; stride 1 is the paper's all-windows protocol), or
             `eval_crops=N` random crops drawn from `crop_seed` (fixed across runs, so every method sees the
             same windows)
Batches are gathered from the uint8 corpus on the fly: even stride-1 text8 (5M windows) costs no memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from suite.data import io, register
from suite.data.base import SPLITS, Dataset, DataSpec, derive_seed

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
K = len(ALPHABET)
TEXT8_SPLITS = (90_000_000, 5_000_000, 5_000_000)
TEXT8_URLS = ("http://mattmahoney.net/dc/text8.zip",)
TEXT8_ZIP_MD5 = "f26f94c5209bc6159618bad4a559ff81"  # md5 of the text8.zip served at TEXT8_URLS
_BAD = 255
_LUT = np.full(256, _BAD, np.uint8)
_LUT[ord(" ")] = 0
_LUT[ord("a") : ord("z") + 1] = np.arange(1, 27, dtype=np.uint8)
_CROP_STREAM = 999  # derive_seed tag for crop starts, apart from batch order (none) and transforms (1000 + rank)


def encode(raw: bytes, where: Path | str) -> np.ndarray:
    """Bytes -> uint8 class indices; anything outside the alphabet is an error naming file, bytes and offsets.

    A single trailing newline is tolerated (dropped): editors add one.
    """
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    codes = _LUT[np.frombuffer(raw, np.uint8)]
    bad = np.flatnonzero(codes == _BAD)
    if bad.size:
        shown = ", ".join(f"{chr(raw[i])!r} at {i}" if raw[i] < 128 else f"byte 0x{raw[i]:02x} at {i}" for i in bad[:5])
        raise io.CorruptDataError(
            f"{where}: {bad.size} character(s) outside the text8 alphabet {ALPHABET!r} (space and lowercase a-z): "
            f"{shown}{' ...' if bad.size > 5 else ''} (byte offsets). Clean the text the text8 way (lowercase; "
            f"letters a-z kept, every other run of characters becomes one space), or use the official text8 file.")
    return codes


def decode(idx: torch.Tensor | np.ndarray) -> str:
    """Class indices (1-D) -> text; indices outside 0..26 show as '?'."""
    a = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx).astype(np.int64).ravel()
    table = np.frombuffer((ALPHABET + "?").encode(), np.uint8)
    return table[np.where((a >= 0) & (a < K), a, K)].tobytes().decode()


class TextCorpusDataset(Dataset):
    """Sequences of `seq_len` class indices from one corpus split contiguously into train / val / test.

    Subclasses give `split_chars()` (characters per split, cheap: no corpus read) and `load_corpus()` (all codes,
    uint8, in split order). Values are int64 class indices in 0..26.
    """

    name = "text"
    source = ""
    stand_in_for: str | None = None

    def __init__(self, seq_len: int = 256, stride: int | None = None, eval_crops: int | None = None,
                 crop_seed: int = 0, train_crops: int | None = None):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if stride is not None and eval_crops is not None:
            raise ValueError("give either stride= (windows) or eval_crops= (random crops) for val/test, not both")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1 (1 = every window, the paper's protocol), got {stride}")
        if eval_crops is not None and eval_crops < 1:
            raise ValueError(f"eval_crops must be >= 1, got {eval_crops}")
        if train_crops is not None and train_crops < 1:
            raise ValueError(f"train_crops must be >= 1, got {train_crops}")
        self.seq_len, self.eval_crops, self.crop_seed = int(seq_len), eval_crops, int(crop_seed)
        self.stride = int(stride) if stride is not None else (None if eval_crops is not None else int(seq_len))
        self._train_crops = train_crops
        self._corpus: dict[str, torch.Tensor] | None = None

    # --- what a subclass provides
    def split_chars(self) -> dict[str, int]:  # pragma: no cover - interface
        raise NotImplementedError

    def load_corpus(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    # --- protocol
    def _count(self, split: str) -> int:
        n, L = self.split_chars()[split], self.seq_len
        if n < L:
            raise ValueError(f"{self.name}: the {split} split has {n} characters, fewer than seq_len={L}; "
                             f"use a shorter seq_len")
        if split == "train":
            return self._train_crops or max(1, n // L)
        return self.eval_crops if self.stride is None else (n - L) // self.stride + 1

    @cached_property
    def spec(self) -> DataSpec:
        chars, L = self.split_chars(), self.seq_len
        sizes = {s: self._count(s) for s in SPLITS}
        protocol = {
            "seq_len": str(L),
            "split": "contiguous train/val/test characters " + " / ".join(f"{chars[s]:,}" for s in SPLITS),
            "train": f"random crops, {sizes['train']} per pass, start uniform on [0, n - {L}], "
                     f"seeded by (run seed, epoch)",
        }
        for s in ("val", "test"):
            n = chars[s]
            if self.stride is None:
                protocol[s] = f"random crops, {sizes[s]} fixed by crop_seed={self.crop_seed}"
            else:
                tail = (n - L) % self.stride
                protocol[s] = (f"windows with stride {self.stride}: {sizes[s]} windows at 0, {self.stride}, ..."
                               + (f"; last {tail} characters unscored" if tail else ""))
        return DataSpec(self.name, "discrete", (L,), num_classes=K,
                        value_map="class 0 = space, 1..26 = a..z (alphabet ' abcdefghijklmnopqrstuvwxyz')",
                        split_sizes=sizes, protocol=protocol, source=self.source, stand_in_for=self.stand_in_for)

    def corpus(self, split: str) -> torch.Tensor:
        """The split's characters as a uint8 tensor (a view into the whole corpus, loaded once)."""
        self.check_split(split)
        if self._corpus is None:
            chars = self.split_chars()
            codes = self.load_corpus()
            total = sum(chars[s] for s in SPLITS)
            if len(codes) != total:
                raise io.CorruptDataError(
                    f"{self.name}: the corpus holds {len(codes):,} characters but the splits "
                    f"{' / '.join(f'{chars[s]:,}' for s in SPLITS)} need {total:,}; the file is truncated or not "
                    f"this corpus (re-download it, or give splits that match)")
            t = torch.from_numpy(np.ascontiguousarray(codes))
            edges = np.cumsum([0] + [chars[s] for s in SPLITS])
            self._corpus = {s: t[edges[i] : edges[i + 1]] for i, s in enumerate(SPLITS)}
        return self._corpus[split]

    def starts(self, split: str, seed: int = 0, epoch: int = 0) -> torch.Tensor:
        """Start offsets (int64) of this pass's sequences; only train depends on (seed, epoch)."""
        self.check_split(split)
        n, L, count = self.split_chars()[split], self.seq_len, self._count(split)
        if split != "train" and self.stride is not None:
            return torch.arange(0, n - L + 1, self.stride, dtype=torch.int64)
        if split == "train":
            tag = (seed, epoch, 0, _CROP_STREAM)
        else:
            tag = (self.crop_seed, SPLITS.index(split), _CROP_STREAM)
        g = torch.Generator().manual_seed(derive_seed(*tag))
        return torch.randint(0, n - L + 1, (count,), generator=g, dtype=torch.int64)

    def examples(self, split: str) -> torch.Tensor:
        """All sequences of a split, uint8 (N, seq_len): strided windows as a view; train at (seed 0, epoch 0)."""
        c = self.corpus(split)
        if split != "train" and self.stride is not None:
            return c.unfold(0, self.seq_len, self.stride)
        return c.unfold(0, self.seq_len, 1)[self.starts(split)]

    def num_examples(self, split: str) -> int:
        self.check_split(split)
        return self.spec.split_sizes[split]

    def transform(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return raw.long()

    def batches(self, split: str, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool | None = None,
                drop_last: bool | None = None, rank: int = 0, world_size: int = 1,
                device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
        """As `Dataset.batches` (same order, sharding and drop-last rules), gathering windows per batch."""
        self.check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        train = split == "train"
        shuffle = train if shuffle is None else shuffle
        drop_last = train if drop_last is None else drop_last
        corpus, starts = self.corpus(split), self.starts(split, seed, epoch)
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, SPLITS.index(split)))
        order = torch.randperm(len(starts), generator=g) if shuffle else torch.arange(len(starts))
        order = order[rank::world_size]
        stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
        windows = corpus.unfold(0, self.seq_len, 1)  # a view: row s = corpus[s : s + L]; 40x faster than a gather
        for i in range(0, stop, batch_size):
            batch = windows[starts[order[i : i + batch_size]]].long()
            yield batch.to(device) if device is not None else batch


class Text8(TextCorpusDataset):
    """text8 (first 10^8 characters of cleaned English Wikipedia) from `text8.zip` or `text8` in the data dir."""

    name = "text8"
    source = f"text8 ({TEXT8_URLS[0]})"

    def __init__(self, data_dir: Path | None = None, splits: tuple[int, int, int] = TEXT8_SPLITS,
                 download: bool | None = None, **protocol):
        super().__init__(**protocol)
        if len(splits) != 3 or any(int(s) < 1 for s in splits):
            raise ValueError(f"splits must be three positive character counts (train, val, test), got {splits}")
        self.root, self.download, self._chars = io.data_dir(data_dir), download, tuple(int(s) for s in splits)

    def split_chars(self) -> dict[str, int]:
        return dict(zip(SPLITS, self._chars, strict=True))

    def search_dirs(self) -> list[Path]:
        return [self.root / "text8", self.root]

    def locate(self) -> Path | None:
        return io.find_file(self.search_dirs(), ("text8", "text8.zip"))  # the plain file reads faster

    def present(self) -> bool:
        return self.locate() is not None

    def load_corpus(self) -> np.ndarray:
        path = self.locate()
        if path is None and io.download_allowed(self.download):
            io.download(TEXT8_URLS, self.search_dirs()[0] / "text8.zip", md5=TEXT8_ZIP_MD5)
            path = self.locate()
        if path is None:
            raise io.missing_error(self.name, ["text8", "text8.zip"], self.search_dirs(), TEXT8_URLS)
        raw = io.read_zip_member(path, "text8") if path.suffix == ".zip" else path.read_bytes()
        where = f"{path}:text8" if path.suffix == ".zip" else path
        codes = encode(raw, where)
        want = sum(self._chars)
        if len(codes) != want:
            raise io.corrupt(where, f"{len(codes):,} characters, but the splits {self._chars} need {want:,} (text8 has "
                                    f"exactly {sum(TEXT8_SPLITS):,})", "re-download text8.zip, or pass splits= that "
                                    "match the file for another corpus")
        return codes


register("text8")(lambda data_dir=None, **options: Text8(data_dir, **options))

__all__ = ["ALPHABET", "K", "TextCorpusDataset", "Text8", "encode", "decode"]
