"""Caches of trained or computed artifacts, keyed by everything that determines their content.

Two pieces every cache in the package uses:

- :func:`code_hash`: a hash of the *source* of the functions that produce an artifact, so that editing the code
  invalidates the cache without anyone remembering to bump a version number. Docstrings, comments and formatting
  do not count (the hash is taken over the syntax tree with docstrings removed).
- :func:`cached_tensors`: build-once storage for trained artifacts (probes, fine-tuned towers, learned prompts):
  a folder ``<cache>/<kind>/<name>-<key hash>/`` holding ``tensors.safetensors`` and ``meta.json`` (the key, the
  artifact's own information such as a training log, and the sha256 of the tensors file). Loading checks the key
  and the content hash; a damaged or stale entry is reported and rebuilt. Nothing is unpickled.
- :func:`save_checked` / :func:`load_checked`: the same guarantee for a cache that is one file (an ``.npy`` array,
  an ``.npz`` of named arrays, a ``.json`` document): a sidecar ``<file>.sha256`` records the sha256 of the
  content (the arrays' names, dtypes, shapes and bytes; the canonical JSON of a document), and loading checks it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import json
import shutil
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_path, build_lock, sha256_file, sha256_json, write_json
from .paths import cache_dir


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
    return cache_dir() / kind / f"{slug(name)}-{sha256_json(key)[:20]}"


def _load(folder: Path, key: dict) -> tuple[dict[str, torch.Tensor], dict] | None:
    meta_path, tensors_path = folder / "meta.json", folder / "tensors.safetensors"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != json.loads(json.dumps(key, default=str)):
            raise ValueError("its key differs from the one asked for")
        if sha256_file(tensors_path) != meta.get("sha256"):
            raise ValueError(f"{tensors_path.name} does not match the sha256 recorded in meta.json")
        return load_file(str(tensors_path)), meta.get("info", {})
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        warnings.warn(f"cached artifact {folder} is damaged or stale ({e}); rebuilding it", stacklevel=4)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def cached_tensors(kind: str, name: str, key: dict,
                   build: Callable[[], tuple[dict[str, torch.Tensor | np.ndarray], dict]], *,
                   use_cache: bool = True) -> tuple[dict[str, torch.Tensor], dict, bool]:
    """``(tensors, info, from_cache)`` of the artifact ``key`` describes; ``build()`` makes it when it is not cached.

    ``build`` returns ``(tensors, info)``: named arrays (saved as safetensors) and JSON-serialisable information
    (a training log, sizes). ``kind`` is the cache sub-folder (``"probes"``, ``"finetune"``...), ``name`` a
    readable prefix of the entry's folder. The key must hold everything that determines the content, including
    a :func:`code_hash` of the code that builds it.
    """
    folder = artifact_dir(kind, name, key)
    if use_cache and (hit := _load(folder, key)) is not None:
        return hit[0], hit[1], True
    with build_lock(folder):  # another run may be building the same entry: wait, then look again
        if use_cache and (hit := _load(folder, key)) is not None:
            return hit[0], hit[1], True
        return _build_tensors(folder, key, build)


def _build_tensors(folder: Path, key: dict, build) -> tuple[dict[str, torch.Tensor], dict, bool]:
    tensors, info = build()
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu())
               .contiguous() for k, v in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "tensors.safetensors", ".safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "meta.json", {"key": key, "info": info, "sha256": sha256_file(folder / "tensors.safetensors")})
    return tensors, json.loads(json.dumps(info, default=str)), False


# ------------------------------------------------------------------------------- single-file caches
CHECKED_SUFFIXES = (".npy", ".npz", ".json")


def content_sha256(payload) -> str:
    """sha256 of a cache payload: an array, a dict of named arrays (names, dtypes, shapes and bytes, by name), or a
    JSON-serialisable document (its canonical JSON, keys sorted)."""
    if isinstance(payload, np.ndarray):
        payload = {"": payload}
    if not (isinstance(payload, dict) and payload and all(isinstance(v, np.ndarray) for v in payload.values())):
        return sha256_json(payload)
    h = hashlib.sha256()
    for name in sorted(payload):
        a = np.ascontiguousarray(payload[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _suffix(path: Path) -> str:
    if path.suffix not in CHECKED_SUFFIXES:
        raise ValueError(f"checked cache files are {CHECKED_SUFFIXES}, not {path.name!r}")
    return path.suffix


def save_checked(path: str | Path, payload) -> None:
    """Write ``payload`` to ``path`` (format by suffix: ``.npy`` an array, ``.npz`` a dict of arrays, ``.json`` a
    JSON document), then its :func:`content_sha256` to the sidecar ``<path>.sha256``; both atomically. The file is
    written first: a crash in between leaves a file whose sidecar is missing or old, which :func:`load_checked`
    rejects."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".npz":
        payload = {k: np.asarray(v) for k, v in payload.items()}
    elif suffix == ".json":
        payload = json.loads(json.dumps(payload, default=str))  # what loading will see
    with atomic_path(path, suffix) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        else:
            with open(tmp, "wb") as f:
                if suffix == ".npy":
                    np.save(f, payload)
                else:
                    np.savez(f, **payload)
    with atomic_path(_sidecar(path)) as tmp:
        tmp.write_text(content_sha256(payload) + "\n")


def _read(data: bytes, suffix: str):
    if suffix == ".json":
        return json.loads(data)
    if suffix == ".npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_checked(path: str | Path, what: str):
    """The payload :func:`save_checked` wrote to ``path``, or None when there is none or it cannot be trusted, so
    that the caller computes it again. A file without its sidecar (written before caches were checked, or cut off
    between the two writes) is stale: removed quietly. One that does not read, or whose content does not match the
    recorded sha256, is reported as a damaged ``what`` (e.g. ``"text-embedding cache"``) and removed. Nothing is
    unpickled."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        return None
    if not _sidecar(path).is_file():
        path.unlink(missing_ok=True)
        return None
    try:
        recorded = _sidecar(path).read_text().strip()
        payload = _read(path.read_bytes(), suffix)
        if content_sha256(payload) != recorded:
            raise ValueError("its content does not match the sha256 recorded when it was written")
        return payload
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"{what} {path} is damaged ({e}); rebuilding it", stacklevel=3)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        return None
