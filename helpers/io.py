"""Small file utilities: atomic writes, content hashes and the lock that keeps two builds of one cache entry apart."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` only if the block succeeds.

    A crash or exception inside the block leaves ``target`` untouched (old content or absent).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class LockBusy(Exception):
    """:func:`file_lock` without waiting found the lock held; ``holder`` is what its holder wrote into it."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 65536, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _locked_fd(path: Path, wait: bool, waiting) -> int:
    """An open descriptor of ``path`` holding its exclusive ``flock`` (tried again when the holder removed the file
    meanwhile, as :func:`file_lock` with ``remove=True`` does)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                os.close(fd)
                raise LockBusy(holder) from None
            if waiting is not None:
                waiting(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, holder: str, *, wait: bool = True, waiting=None,
              remove: bool = False) -> Iterator[str]:
    """Hold the exclusive ``fcntl.flock`` of the file ``path`` for the block, writing ``holder`` (who holds it)
    into the file. The system releases the lock when its holder exits, even by SIGKILL, so it never goes stale.

    A held lock raises :class:`LockBusy` (``wait=False``) or is waited for, after ``waiting(holder text)``. The block
    receives what the previous holder wrote: with ``remove=True`` (the file is deleted on release) that is empty
    unless the previous holder died holding it.
    """
    path = Path(path)
    fd = _locked_fd(path, wait, waiting)
    try:
        previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield previous
    finally:
        if remove:
            path.unlink(missing_ok=True)  # while still holding it: a waiting process then locks a fresh file
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def build_lock(target: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on building ``target`` (a cache folder or file) for the duration of the block.

    Two runs that share a cache (two notebooks, two ``--out`` folders, a notebook and a test) would otherwise
    train or extract the same entry at once and remove or overwrite each other's half-written files. The lock is
    :func:`file_lock` on ``<cache>/.locks/<hash of target's path>.lock`` (kept out of the entries' folders, which
    are listed and removed whole). A second builder waits, saying once
    whom it waits for; after the block it should look in the cache again before building. ``enabled=False`` (a
    torchrun rank other than 0) takes no lock, and neither does a read-only cache (nothing can be built there).
    """
    if not enabled:
        yield
        return
    from .paths import cache_dir

    target = Path(target)
    name = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:32]
    try:
        (locks := cache_dir() / ".locks").mkdir(parents=True, exist_ok=True)
        lock = file_lock(locks / f"{name}.lock", f"pid {os.getpid()}",
                         waiting=lambda h: print(f"[cache] waiting for {h or 'another process'}, which is building "
                                                 f"{target}", flush=True))
        lock.__enter__()
    except OSError:  # a read-only cache: the build itself says why it cannot write
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
