"""Caches of trained or computed artifacts, keyed by everything that determines their content.

One contract, implemented once (:class:`CacheEntry`), for every cache of the package:

- **keyed**: an entry is the folder ``<cache>/<kind>/<name>-<key hash>/``; its ``meta.json`` repeats the key, and
  an entry whose recorded key differs from the one asked for is stale. A key holds everything that determines the
  content, including :func:`code_hash` of the code that builds it, so editing that code invalidates the cache
  without anyone remembering to bump a version number.
- **atomic**: every file reaches its name by rename (:func:`helpers.io.atomic_path`), and ``meta.json`` is written
  last: a build that dies half-way leaves no entry that reads as valid.
- **verified**: ``meta.json`` records the size and sha256 of every file of the entry and the sha256 of the entry's
  JSON information; loading checks them (and what the format adds: shapes, finiteness), nothing is unpickled.
- **rebuilt**: an entry that fails a check is reported with one warning (``"<what> <folder> is damaged or stale
  (<reason>); <what happens>"``, the wording :mod:`helpers.events` counts as a rebuild), removed and built again.
- **locked**: two processes never build one entry at once (:func:`helpers.io.build_lock`).

Built on it: :func:`cached_tensors` (safetensors: probes, fine-tuned towers, learned prompts, SeTAR, CMA, attacks)
and :func:`cached_arrays` (``.npy`` arrays and/or a JSON document: text embeddings, NegLabel's words, metric reports,
decoded images, content fingerprints of datasets). A new method gets caching and integrity by calling one of them
with a key that holds everything its result depends on (metric reports, many and cheap, skip the lock). Formats
that need their own layout use :class:`CacheEntry` directly: the feature cache (arrays merged from resumable
chunks, the large ones memory-mapped) and pocket CLIP checkpoints (files written by the trainer). Resume chunks of
a build in progress are single ``.npz`` files in the entry's folder (:func:`save_chunk` / :func:`load_chunk`),
checked by zip's CRC-32 and reported with the same warning.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import json
import shutil
import textwrap
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_path, build_lock, sha256_file, sha256_json, write_json
from .paths import cache_dir

META = "meta.json"
# what reading a damaged file raises (np.load, json, zip, safetensors): each one means "rebuild", never a crash
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, SafetensorError)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _source_hash(obj) -> str:
    source = textwrap.dedent(inspect.getsource(obj))
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def code_hash(*objects) -> str:
    """Hash (16 hex digits) of the source code of ``objects`` (functions, classes or modules), ignoring
    docstrings, comments and formatting. Put it into a cache key to tie the cache to the code that fills it.

    Only the source counts, not where it was imported from: a module run as ``python -m`` is ``__main__``
    there and ``helpers...`` elsewhere, and both must find the same cache."""
    return sha256_json([f"{getattr(o, '__qualname__', getattr(o, '__name__', ''))}:{_source_hash(o)}"
                        for o in objects])[:16]


def slug(text: str) -> str:
    """A file-name-safe version of a model id or dataset name."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)[:80]


def artifact_dir(kind: str, name: str, key: dict) -> Path:
    """The folder of the entry keyed by ``key``: ``<cache>/<kind>/<name>-<first 20 hex digits of its hash>``."""
    return cache_dir() / kind / f"{slug(name)}-{sha256_json(key)[:20]}"


def plain(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples become lists, other objects their ``str``): what a cache stores."""
    return json.loads(json.dumps(obj, default=str))


def file_record(path: str | Path) -> dict:
    """What ``meta.json`` records of a file: its size and sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def report_damage(what: str, where: str | Path, reason: Any, action: str = "rebuilding it", stacklevel: int = 3) -> None:
    """The one warning for a cache file or entry that cannot be trusted and is rebuilt."""
    warnings.warn(f"{what} {where} is damaged or stale ({reason}); {action}", stacklevel=stacklevel)


# ------------------------------------------------------------------------------------------- entries
class CacheEntry:
    """One cache entry: the folder ``folder`` holding the entry's files and ``meta.json``, keyed by ``key``.

    ``meta.json`` (written last, by :meth:`commit`) holds ``key``, ``info`` (the entry's JSON information: a training
    log, the paths of the rows...), ``info_sha256`` and ``files`` (``{name: {"bytes", "sha256"}}``). :meth:`load`
    checks all of it; ``what`` names the cache in the warning of a damaged entry, ``action`` says what happens next.
    """

    def __init__(self, folder: str | Path, key: dict, what: str = "cached artifact", action: str = "rebuilding it"):
        self.folder, self.key, self.what, self.action = Path(folder), plain(key), what, action
        self.written: list[str] = []

    def file(self, name: str) -> Path:
        return self.folder / name

    def meta(self) -> dict | None:
        """The checked ``meta.json``; None when there is none (nothing built, or a build that did not finish).
        ``ValueError`` naming the first problem when the entry is stale or damaged."""
        path = self.folder / META
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{META} does not read as JSON ({e})") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise ValueError(f"{META} records no files (written by an older version of the package?)")
        if meta.get("key") != self.key:
            raise ValueError("its key differs from the one asked for")
        if sha256_json(meta.get("info")) != meta.get("info_sha256"):
            raise ValueError(f"the information in {META} does not match the sha256 recorded with it")
        for name, rec in meta["files"].items():
            f = self.folder / name
            if not f.is_file():
                raise ValueError(f"{name} is missing")
            if f.stat().st_size != rec["bytes"]:
                raise ValueError(f"{name} has {f.stat().st_size} bytes, expected {rec['bytes']}")
            if sha256_file(f) != rec["sha256"]:
                raise ValueError(f"{name} does not match the sha256 recorded in {META}")
        return meta

    def load(self, reader: Callable[[dict], Any] | None = None) -> Any:
        """``reader(meta)`` (the checked ``meta.json`` itself without a reader) of an intact entry; None when there
        is none. A stale or damaged entry (:meth:`meta` or ``reader`` raising one of :data:`LOAD_ERRORS`) is
        reported, removed and None returned."""
        try:
            meta = self.meta()
            return None if meta is None else meta if reader is None else reader(meta)
        except LOAD_ERRORS as e:
            self.discard(e)
            return None

    def discard(self, reason: Any) -> None:
        """Report the entry as damaged or stale (``reason``) and remove it."""
        report_damage(self.what, self.folder, reason, self.action, stacklevel=4)
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def begin(self) -> None:
        """Start (re)building: the entry stops reading as valid until :meth:`commit`; other files are kept (a
        resumable build keeps its chunks there)."""
        (self.folder / META).unlink(missing_ok=True)
        self.written = []

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A temporary path to write the entry's file ``name`` to; renamed onto it when the block succeeds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name, Path(name).suffix) as tmp:
            yield tmp
        self.written.append(name)

    def commit(self, info: dict | None = None, files: list[str] | None = None) -> dict:
        """Write ``meta.json``: the key, ``info`` and the record of ``files`` (default: those written through
        :meth:`writing` since :meth:`begin`). The entry is complete from now on; its meta is returned."""
        info = plain(info or {})
        names = self.written if files is None else files
        meta = {"key": self.key, "info": info, "info_sha256": sha256_json(info),
                "files": {n: file_record(self.folder / n) for n in names}}
        write_json(self.folder / META, meta)
        return meta


def cached(entry: CacheEntry, reader: Callable[[dict], Any], build: Callable[[CacheEntry], Any], *,
           use_cache: bool = True, lock: bool = True) -> tuple[Any, bool]:
    """``(value, from_cache)``: ``reader(meta)`` of ``entry`` when it is intact, else ``build(entry)``, which writes
    the entry's files (:meth:`CacheEntry.writing`) and ends with :meth:`CacheEntry.commit`. The build holds the
    entry's build lock (``lock=False``: the caller holds it); the entry is looked at again once the lock is held,
    as another process may just have built it."""
    if use_cache and (hit := entry.load(reader)) is not None:
        return hit, True
    with build_lock(entry.folder, enabled=lock):
        if use_cache and (hit := entry.load(reader)) is not None:
            return hit, True
        entry.begin()
        return build(entry), False


# ------------------------------------------------------------------------------------ tensors, arrays
def cached_tensors(kind: str, name: str, key: dict,
                   build: Callable[[], tuple[dict[str, torch.Tensor | np.ndarray], dict]], *,
                   use_cache: bool = True) -> tuple[dict[str, torch.Tensor], dict, bool]:
    """``(tensors, info, from_cache)`` of the artifact ``key`` describes; ``build()`` makes it when it is not cached.

    Keyed by ``key`` (everything that determines the content, with a :func:`code_hash` of the code that builds it)
    in ``<cache>/<kind>/<name>-<key hash>/``: ``tensors.safetensors`` (the named arrays ``build`` returns) and
    ``meta.json`` (``info``, JSON-serialisable: a training log, sizes). ``kind`` is the cache sub-folder
    (``"probes"``, ``"finetune"``...), ``name`` a readable prefix of the entry's folder.
    """
    entry = CacheEntry(artifact_dir(kind, name, key), key, "cached artifact")

    def read(meta):
        if "tensors.safetensors" not in meta["files"]:
            raise ValueError("it holds no tensors.safetensors")
        return load_file(str(entry.file("tensors.safetensors"))), meta["info"]

    def make(entry):
        tensors, info = build()
        tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu())
                   .contiguous() for k, v in tensors.items()}
        with entry.writing("tensors.safetensors") as tmp:
            save_file(tensors, str(tmp))
        return tensors, entry.commit(info)["info"]

    (tensors, info), hit = cached(entry, read, make, use_cache=use_cache)
    return tensors, info, hit


def read_arrays(entry: CacheEntry, meta: dict, mmap: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The ``.npy`` files of a checked entry by name (without ``.npy``); those named in ``mmap`` memory-mapped, the
    others in memory. Never unpickled: an object array raises ``ValueError``."""
    out = {}
    for f in meta["files"]:
        if f.endswith(".npy"):
            name = f[:-4]
            out[name] = np.load(entry.file(f), mmap_mode="r" if name in mmap else None, allow_pickle=False)
    return out


def write_arrays(entry: CacheEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Write each array as ``<name>.npy`` into ``entry`` (atomically); the arrays as written."""
    out = {}
    for name, a in arrays.items():
        out[name] = np.asarray(a)
        with entry.writing(f"{name}.npy") as tmp:
            np.save(tmp, out[name], allow_pickle=False)
    return out


def cached_arrays(kind: str, name: str, key: dict, build: Callable[[], tuple[dict[str, np.ndarray], dict]], *,
                  what: str, use_cache: bool = True, lock: bool = True,
                  check: Callable[[dict[str, np.ndarray], dict], None] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict, bool]:
    """``(arrays, info, from_cache)``: :func:`cached_tensors` for numpy arrays (one ``.npy`` per array, any dtype
    but object, so strings too) and/or a JSON document ``info``, keyed by ``key`` in ``<cache>/<kind>/<name>-<key
    hash>/``. ``check(arrays, info)`` may add checks of the content (shapes, finiteness): a ``ValueError`` there is
    damage too. ``what`` names the cache in warnings (``"text-embedding cache"``). ``lock=False`` builds without the
    build lock, for entries cheap to build and many (two processes then may both build one; either result serves)."""
    entry = CacheEntry(artifact_dir(kind, name, key), key, what)

    def read(meta):
        arrays = read_arrays(entry, meta)
        if check is not None:
            check(arrays, meta["info"])
        return arrays, meta["info"]

    def make(entry):
        arrays, info = build()
        arrays = write_arrays(entry, arrays)
        return arrays, entry.commit(info)["info"]

    (arrays, info), hit = cached(entry, read, make, use_cache=use_cache, lock=lock)
    return arrays, info, hit


# ------------------------------------------------------------------------------------- resume chunks
def save_chunk(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one resume chunk of a build in progress (named arrays, one ``.npz``) atomically. Its key is the entry
    it belongs to and its name; zip's CRC-32 of every array lets :func:`load_chunk` tell a damaged one."""
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_chunk(path: str | Path, what: str = "chunk", check: Callable[[dict], None] | None = None,
               action: str = "computing it again") -> dict[str, np.ndarray] | None:
    """The arrays of a chunk :func:`save_chunk` wrote, or None when there is none. One that does not read (cut short,
    CRC mismatch, an object array: never unpickled) or fails ``check(arrays)`` is reported, removed and None
    returned."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # closed also when the zip does not read
            arrays = {k: z[k] for k in z.files}
        if check is not None:
            check(arrays)
        return arrays
    except LOAD_ERRORS as e:
        report_damage(what, path, f"{type(e).__name__}: {e}", action)
        path.unlink(missing_ok=True)
        return None
