"""File helpers shared by the data loaders: where the bytes live, checksums, downloads, archives, errors.

Every failure raises a `DataError` (or a subclass below) whose message names the file, what is wrong and
what to do, because a bare `EOFError` from deep inside gzip tells a user nothing.

Data dir resolution: an explicit `data_dir`, else env BFNBENCH_DATA_DIR, else ~/.cache/bfnbench/data.
Downloads happen only when asked (`download=True` or env BFNBENCH_DOWNLOAD=1); they land in a `.part`
file, are checked against the official checksum, and only then renamed into place (atomic). Files already on
disk are validated by structure (magic numbers, sizes, keys, alphabet) rather than by digest: repackaged copies
such as Debian's re-gzipped Fashion-MNIST have archive checksums that differ from the official ones.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from suite.data.base import DataError

ENV_DATA_DIR = "BFNBENCH_DATA_DIR"
ENV_DOWNLOAD = "BFNBENCH_DOWNLOAD"
DEFAULT_DATA_DIR = Path("~/.cache/bfnbench/data")
HOW_TO_PROVIDE = (
    f"pass --data-dir DIR (data_dir=DIR) or set {ENV_DATA_DIR}=DIR to a directory holding them, "
    f"or allow a download with download=True / {ENV_DOWNLOAD}=1 where there is a network"
)
# errors a damaged archive raises from inside the standard library
_ARCHIVE_ERRORS = (EOFError, OSError, zlib.error, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError)


class MissingDataError(DataError):
    """The files of a data set are not where we looked."""


class CorruptDataError(DataError):
    """A file exists but is truncated, malformed or not what its name says."""


class ChecksumError(CorruptDataError):
    """A file's digest differs from the official one."""


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: `explicit`, else $BFNBENCH_DATA_DIR, else ~/.cache/bfnbench/data."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR.expanduser()


def download_allowed(option: bool | None = None) -> bool:
    """A download needs consent: the `download=` option wins, else env BFNBENCH_DOWNLOAD=1."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_DOWNLOAD, "").strip().lower() in ("1", "true", "yes")


def find_file(dirs: Iterable[Path], names: Sequence[str]) -> Path | None:
    """The first existing `dir/name`, trying every name in each directory in order (cheap: stat only)."""
    for d in dirs:
        for n in names:
            p = Path(d) / n
            if p.is_file():
                return p
    return None


def missing_error(dataset: str, names: Sequence[str], dirs: Sequence[Path], urls: Sequence[str] = (),
                  extra: str = "") -> MissingDataError:
    where = ", ".join(str(d) for d in dirs)
    msg = (f"{dataset}: none of the files {', '.join(names)} found in {where}. To provide them, {HOW_TO_PROVIDE}.")
    if urls:
        msg += f" Official source: {', '.join(urls)}."
    return MissingDataError(msg + (" " + extra if extra else ""))


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str, algorithm: str = "md5", url: str | None = None) -> None:
    """Raise `ChecksumError` (expected vs actual, what to do) unless `path` has digest `expected`."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        src = f" from {url}" if url else ""
        raise ChecksumError(
            f"{path}: checksum mismatch: expected {algorithm} {expected}, got {actual}. The file is corrupt, "
            f"truncated or not the official release; delete it and re-download it{src} (download=True / "
            f"{ENV_DOWNLOAD}=1), or put a good copy there.")


def download(urls: Sequence[str], dest: Path, md5: str | None = None, sha256: str | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch the first URL that answers into `dest`, verified; `file://` URLs work too (tests, mirrors).

    The bytes go to `dest.part` and are renamed into place only after the checksum matches, so an interrupted
    or corrupt download never masquerades as the real file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except OSError as e:  # URLError, timeouts, refused connections are all OSError
            errors.append(f"{url}: {e}")
            part.unlink(missing_ok=True)
            continue
        try:
            if md5:
                verify_checksum(part, md5, "md5", url)
            if sha256:
                verify_checksum(part, sha256, "sha256", url)
        except ChecksumError as e:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{e} (the download was saved to {part} and has been deleted; {dest} was not "
                                f"written)") from None
        os.replace(part, dest)
        return dest
    raise MissingDataError(
        f"could not download {dest.name}: {'; '.join(errors)}. Is there a network? Otherwise fetch the file on "
        f"another machine and put it at {dest} (or in the directory given by --data-dir / {ENV_DATA_DIR}).")


def corrupt(path: Path | str, what: str, fix: str = "") -> CorruptDataError:
    fix = fix or "delete it and re-download it (download=True / BFNBENCH_DOWNLOAD=1), or put a good copy there"
    return CorruptDataError(f"{path}: {what}; {fix}.")


def read_maybe_gzip(path: Path) -> bytes:
    """All bytes of `path`, gunzipped if it starts with the gzip magic (names may lie, so sniff)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _ARCHIVE_ERRORS as e:
        raise corrupt(path, f"truncated or corrupt gzip file ({type(e).__name__}: {e})") from None


def read_xz(path: Path) -> bytes:
    try:
        with lzma.open(path, "rb") as f:
            return f.read()
    except _ARCHIVE_ERRORS as e:
        raise corrupt(path, f"truncated or corrupt xz file ({type(e).__name__}: {e})") from None


def read_zip_member(path: Path, member: str) -> bytes:
    """One member of a zip archive, with damaged-archive and missing-member errors that say so."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if member not in names:
                raise corrupt(path, f"zip archive has no member {member!r} (it holds {names[:5]})")
            return z.read(member)
    except _ARCHIVE_ERRORS as e:
        raise corrupt(path, f"truncated or corrupt zip archive ({type(e).__name__}: {e})") from None


def read_tar_members(path: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The named members of a (gzipped) tar archive, read in one streaming pass."""
    want, out = set(members), {}
    try:
        with tarfile.open(path, "r:*") as t:
            for info in t:
                if info.name in want and info.isfile():
                    out[info.name] = t.extractfile(info).read()
                    if len(out) == len(want):
                        break
    except _ARCHIVE_ERRORS as e:
        raise corrupt(path, f"truncated or corrupt tar archive ({type(e).__name__}: {e})") from None
    lost = sorted(want - set(out))
    if lost:
        raise corrupt(path, f"tar archive lacks {', '.join(lost)} (truncated, or not the official archive)")
    return out
