"""Where things live on disk. Every location can be moved with an environment variable.

=================  ======================  ==========================================
what               variable                default
=================  ======================  ==========================================
prepared datasets  ``CLIPOOD_DATA``        ``<repo>/data``
dataset mirror     ``CLIPOOD_MIRROR``      none (``--mirror`` option instead)
caches             ``CLIPOOD_CACHE``       ``<repo>/cache`` (features, models, words)
=================  ======================  ==========================================

Tables and figures go where the runner says (``results_dir`` / ``figures_dir`` notebook parameters).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    return _env_path("CLIPOOD_DATA", REPO_ROOT / "data")


def cache_dir() -> Path:
    return _env_path("CLIPOOD_CACHE", REPO_ROOT / "cache")


def mirror_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The dataset mirror given explicitly or by ``CLIPOOD_MIRROR`` (None when neither is set)."""
    value = explicit or os.environ.get("CLIPOOD_MIRROR")
    return Path(value).expanduser().resolve() if value else None
