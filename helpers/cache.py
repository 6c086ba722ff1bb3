"""Caches of trained or computed artifacts, keyed by everything that determines their content.

Two pieces every cache in the package uses:

- :func:`code_hash`: a hash of the *source* of the functions that produce an artifact, so that editing the code
  invalidates the cache without anyone remembering to bump a version number. Docstrings, comments and formatting
  do not count (the hash is taken over the syntax tree with docstrings removed).
- :func:`cached_tensors`: build-once storage for trained artifacts (probes, fine-tuned towers, learned prompts):
  a folder ``<cache>/<kind>/<name>-<key hash>/`` holding ``tensors.safetensors`` and ``meta.json`` (the key, the
  artifact's own information such as a training log, and the sha256 of the tensors file). Loading checks the key
  and the content hash; a damaged or stale entry is reported and rebuilt. Nothing is unpickled.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import shutil
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_path, sha256_file, sha256_json, write_json
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
    tensors, info = build()
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu())
               .contiguous() for k, v in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "tensors.safetensors", ".safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "meta.json", {"key": key, "info": info, "sha256": sha256_file(folder / "tensors.safetensors")})
    return tensors, json.loads(json.dumps(info, default=str)), False
