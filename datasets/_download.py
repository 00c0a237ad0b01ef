"""Finding, downloading and verifying dataset files; the cache folder for derived arrays.

A :class:`Resource` names one file: where it is looked for under the data folder, the
canonical URLs it is downloaded from (mirrors tried in order), and the checksums it must
have (the published MD5 where one exists, else the SHA-256 we recorded from a verified copy;
a zip whose own hash is unknown is verified through the published hashes of its members).

Rules (issue 3, ``anchors.md`` §4):

* A file that is present but has the wrong hash is never used: :class:`ChecksumError` names
  the file, the expected and the actual hash.
* Downloads stream into a temporary file beside the target, with a tqdm progress bar, and are
  renamed into place only after size and hash checked out (atomic); a truncated or corrupted
  download is deleted and never used.
* A missing file with no way to download it raises :class:`DatasetNotFound`, saying where to
  get it and where to put it.
* Nothing is written into a data folder that is not writable (permission bits are honoured
  even for root, so a read-only shared copy stays untouched). Downloads then go to
  ``<cache>/downloads`` and derived arrays to ``<cache>`` (:func:`cache_root`).
* ``FAIRCLUSTERBENCH_OFFLINE=1`` turns downloading off.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bench.paths import default_data_dir, temp_file_beside, write_atomically

__all__ = [
    "DataError",
    "ChecksumError",
    "DownloadError",
    "DatasetNotFound",
    "Resource",
    "file_hash",
    "verify",
    "fetch",
    "download",
    "locate",
    "is_writable",
    "cache_root",
    "cached_arrays",
    "offline",
]

CHUNK = 1 << 20
HASHES = ("sha256", "md5", "sha1")
TIMEOUT_S = 60


class DataError(RuntimeError):
    """Base class of the data errors below."""


class ChecksumError(DataError):
    """A file whose content is not what it should be (wrong hash or size)."""

    def __init__(self, path, algorithm: str, expected: str, actual: str, note: str = ""):
        self.path, self.algorithm, self.expected, self.actual = str(path), algorithm, expected, actual
        msg = f"{path}: {algorithm} mismatch: expected {expected}, got {actual}"
        super().__init__(msg + (f" ({note})" if note else ""))


class DownloadError(DataError):
    """A download that failed (network error, truncated transfer, bad content)."""


class DatasetNotFound(DataError, FileNotFoundError):
    """A dataset file that is neither on disk nor downloadable here."""


@dataclass(frozen=True)
class Resource:
    """One file of a dataset.

    ``filename`` is stored under ``<data_dir>/<subdir>/``; ``aliases`` are other paths
    (relative to the data folder) where an existing copy is also accepted, e.g. torchvision's
    ``MNIST/raw/`` layout. ``members`` maps a member name of a zip (searched in nested zips
    too) to ``(algorithm, hex)``: the check used when the zip itself has no pinned hash."""

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    sha1: str | None = None
    size: int | None = None
    subdir: str = ""
    aliases: tuple[str, ...] = ()
    members: dict = field(default_factory=dict)
    page: str = ""  # human-readable page to get it from by hand

    def relpath(self) -> str:
        return f"{self.subdir}/{self.filename}" if self.subdir else self.filename

    def candidates(self, data_dir) -> list[Path]:
        data_dir = Path(data_dir)
        paths = [data_dir / self.relpath()] + [data_dir / a for a in self.aliases]
        paths.append(cache_root(data_dir) / "downloads" / self.relpath())
        return paths

    def where_to_get(self) -> str:
        sources = list(self.urls) + ([self.page] if self.page else [])
        return " or ".join(sources) if sources else "(no public URL known)"


# --------------------------------------------------------------------------- environment


def offline() -> bool:
    """True when ``FAIRCLUSTERBENCH_OFFLINE`` is set to a true value: never download."""
    return os.environ.get("FAIRCLUSTERBENCH_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def is_writable(path) -> bool:
    """Whether we may write into folder ``path`` (or create it under a writable parent).

    Permission bits are honoured even for root: a folder with no write bit for anyone is
    read-only for us (the shared offline copy is ``r-x`` for all)."""
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return p.is_dir() and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(p, os.W_OK)


def cache_root(data_dir=None) -> Path:
    """Where derived arrays (features, processed matrices, downloads into a read-only data
    folder) go: ``$FAIRCLUSTERBENCH_CACHE``, else ``<data_dir>/cache`` when the data folder is
    writable, else ``<default data dir>/cache``."""
    env = os.environ.get("FAIRCLUSTERBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    if data_dir is not None and is_writable(data_dir):
        return Path(data_dir) / "cache"
    return default_data_dir() / "cache"


# --------------------------------------------------------------------------- hashing

_VERIFIED: dict[tuple, dict] = {}


def file_hash(path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _hashes(path, algorithms=("sha256",)) -> dict:
    """Hashes of a file (memoised per path, size and mtime within the process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    known = _VERIFIED.setdefault(key, {"bytes": st.st_size})
    todo = {a: hashlib.new(a) for a in set(algorithms) | {"sha256"} if a not in known}
    if todo:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                for h in todo.values():
                    h.update(block)
        known.update({a: h.hexdigest() for a, h in todo.items()})
    return known


def _iter_zip_members(zf: zipfile.ZipFile, depth: int = 0):
    """(name, ZipFile) pairs of every member, descending into nested zips."""
    for name in zf.namelist():
        yield name, zf
        if name.lower().endswith(".zip") and depth < 2:
            with zipfile.ZipFile(io.BytesIO(zf.read(name))) as inner:
                yield from _iter_zip_members(inner, depth + 1)


def _check_members(path, members: dict) -> dict:
    """Check the pinned hashes of members of zip ``path``; return {member: hash}."""
    found = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name, owner in _iter_zip_members(zf):
                base = name.rsplit("/", 1)[-1]
                if base in members and base not in found:
                    algorithm, expected = members[base]
                    actual = hashlib.new(algorithm, owner.read(name)).hexdigest()
                    if actual != expected:
                        raise ChecksumError(f"{path}!{name}", algorithm, expected, actual)
                    found[base] = actual
    except zipfile.BadZipFile as exc:
        raise ChecksumError(path, "zip", "a valid zip archive", f"unreadable ({exc})") from None
    missing = sorted(set(members) - set(found))
    if missing:
        raise ChecksumError(path, "zip members", ", ".join(missing), "not in the archive")
    return found


def verify(path, resource: Resource) -> dict:
    """Check ``path`` against the resource's pins; return the provenance record
    ``{"file", "sha256", "bytes", ...}``. Raises :class:`ChecksumError`."""
    h = _hashes(path, [a for a in HASHES if getattr(resource, a)])
    if resource.size is not None and h["bytes"] != resource.size:
        raise ChecksumError(path, "size", f"{resource.size} bytes", f"{h['bytes']} bytes",
                            "truncated or different file")
    for algorithm in HASHES:
        pinned = getattr(resource, algorithm)
        if pinned and h[algorithm] != pinned:
            raise ChecksumError(path, algorithm, pinned, h[algorithm], "not used")
    record = {"file": str(path), "sha256": h["sha256"], "bytes": h["bytes"]}
    if resource.members:
        record["members"] = _check_members(path, resource.members)
    if not (any(getattr(resource, a) for a in HASHES) or resource.members):
        raise DataError(f"resource {resource.filename} has no pinned checksum; refusing to use it")
    return record


# --------------------------------------------------------------------------- locating / fetching


def locate(resource: Resource, data_dir) -> Path | None:
    """The first existing copy of ``resource`` (not yet verified), or None."""
    for p in resource.candidates(data_dir):
        if p.is_file():
            return p
    return None


def fetch(resource: Resource, data_dir, *, progress: bool = True) -> tuple[Path, dict]:
    """A verified local copy of ``resource``: found on disk, else downloaded.

    Returns ``(path, record)``. Raises :class:`ChecksumError` for a present but corrupted
    file (it is not replaced: the user's files are never deleted) or a downloaded file with the
    wrong content (deleted), and :class:`DatasetNotFound` when there is nothing to download
    from, downloading is off, or every mirror failed (the message lists each failure and says
    where to get the file and where to put it)."""
    found = locate(resource, data_dir)
    if found is not None:
        return found, verify(found, resource)
    target_dir = Path(data_dir) / resource.subdir if is_writable(data_dir) else (
        cache_root(data_dir) / "downloads" / resource.subdir)
    if not resource.urls or offline():
        raise DatasetNotFound(not_found_message(resource, data_dir, reason="downloading is off" if offline() else ""))
    errors = []
    for url in resource.urls:
        try:
            path = download(url, target_dir / resource.filename, resource, progress=progress)
            return path, verify(path, resource)
        except ChecksumError:
            raise
        except DownloadError as exc:
            errors.append(str(exc))
    raise DatasetNotFound(not_found_message(resource, data_dir, reason="; ".join(errors)))


def not_found_message(resource: Resource, data_dir, reason: str = "") -> str:
    where = Path(data_dir) / resource.relpath()
    msg = (f"{resource.filename} not found (looked in {', '.join(str(p) for p in resource.candidates(data_dir))}). "
           f"Get it from {resource.where_to_get()} and put it at {where}")
    pins = [f"{a} {getattr(resource, a)}" for a in HASHES if getattr(resource, a)]
    if pins:
        msg += f" (expected {', '.join(pins)})"
    if reason:
        msg += f". Download failed: {reason}"
    return msg


def download(url: str, target, resource: Resource | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` atomically; verify size and hashes when ``resource``
    pins them. A failed, truncated or mismatching transfer leaves nothing at ``target``."""
    from tqdm.auto import tqdm

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(target, suffix=".part")
    try:
        hashes, got = {a: hashlib.new(a) for a in HASHES}, 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "fairclusterbench"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, os.fdopen(fd, "wb") as out:
                fd = None
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else (resource.size if resource else None)
                with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=target.name, disable=not progress, leave=False) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        for h in hashes.values():
                            h.update(block)
                        got += len(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadError(f"{url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
        except Exception as exc:  # http.client.IncompleteRead and friends
            raise DownloadError(f"{url}: interrupted ({type(exc).__name__}: {exc})") from None
        if expected is not None and got != expected:
            raise DownloadError(f"{url}: interrupted download: got {got} of {expected} bytes")
        if resource is not None:
            if resource.size is not None and got != resource.size:
                raise ChecksumError(target, "size", f"{resource.size} bytes", f"{got} bytes",
                                    f"downloaded from {url}; not kept")
            for algorithm, h in hashes.items():
                pinned = getattr(resource, algorithm)
                if pinned and h.hexdigest() != pinned:
                    raise ChecksumError(target, algorithm, pinned, h.hexdigest(), f"downloaded from {url}; not kept")
            if resource.members:
                _check_members(tmp, resource.members)
        os.replace(tmp, target)
        tmp = None
        return target
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- cache helpers


def digest(*parts) -> str:
    """SHA-256 of a JSON encoding of ``parts`` (cache keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_arrays(path, build: Callable[[], dict], use_cache: bool = True) -> dict:
    """Load the ``.npz`` at ``path`` or build it (dict of arrays) and store it atomically.

    A cache that cannot be written is not an error (the arrays are returned all the same)."""
    path = Path(path)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuild
    arrays = build()
    if use_cache:
        try:
            def write(tmp):
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            write_atomically(path, write)
        except OSError:
            pass
    return arrays


def first_existing(paths: Iterable[Path]) -> Path | None:
    for p in paths:
        if Path(p).exists():
            return Path(p)
    return None
