"""Shared fixtures. Tests run offline against the prepared data folder (``make test`` imports the mirror first)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from helpers.data import DATASETS  # noqa: E402
from helpers.paths import data_dir  # noqa: E402


def _prepared(name: str) -> bool:
    return (data_dir() / DATASETS[name].root).is_dir()


@pytest.fixture(scope="session")
def require_data():
    """Skip-free guard: the teaching datasets must be prepared (``make test`` does it from the mirror)."""
    missing = [n for n in ("cifar10-test", "dtd10", "mnist", "fashion-mnist", "tiny-imagenet-near",
                           "imagenet-sample") if not _prepared(n)]
    if missing:
        pytest.fail(f"datasets {missing} are not prepared in {data_dir()}: run `make test MIRROR=<mirror>` "
                    f"or `python -m helpers.data import --mirror <mirror>` first")


@pytest.fixture(scope="session")
def smoke_model(require_data):
    """The smoke-profile pocket CLIP (trained once, seconds, then cached)."""
    from helpers.models import load_model

    return load_model("pocket:tiny-100")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private feature/text cache folder for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CLIPOOD_CACHE", str(path))
    return path
