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


def _lock_holder(fd: int) -> str:
    """What the holder of a lock wrote into its lock file (``pid N``), or ``another process``."""
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def build_lock(target: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on building ``target`` (a cache folder or file) for the duration of the block.

    Two runs that share a cache (two notebooks, two ``--out`` folders, a notebook and a test) would otherwise
    train or extract the same entry at once and remove or overwrite each other's half-written files. The lock is
    ``fcntl.flock`` on a hidden file beside ``target`` (``.<name>.lock``): the system releases it when its holder
    exits, even by SIGKILL, so it never goes stale. A second builder waits, saying once whom it waits for; after
    the block it should look in the cache again before building. ``enabled=False`` (a torchrun rank other than 0)
    takes no lock.
    """
    if not enabled:
        yield
        return
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only cache: nothing can be built there anyway, the build itself says why
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[cache] waiting for {_lock_holder(fd)}, which is building {target}", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
