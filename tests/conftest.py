"""Shared fixtures. Tests run offline against the prepared data folder (``make test`` imports the mirror first)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist the workers share the cores (oversubscribed OpenMP threads slow every worker down); notebook
# kernels and torchrun processes started by a test inherit the setting. Set before torch is imported.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402

from helpers.data import DATASETS  # noqa: E402
from helpers.paths import data_dir  # noqa: E402


def _prepared(name: str) -> bool:
    return (data_dir() / DATASETS[name].root).is_dir()


# Fixtures built once and shared: under pytest-xdist (`make test` runs `-n auto --dist loadgroup`) every test that
# uses one runs on the same worker, so the fixture is still built once per test run; the other tests go by file, so a
# module's fixtures are built once too.
SHARED_FIXTURES = {"smoke_series": "smoke-series", "paper_world": "paper-world"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the marks into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for f, g in SHARED_FIXTURES.items() if f in getattr(item, "fixturenames", ())),
                     item.nodeid.split("::")[0])
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Stop when pytest-xdist does not group (it writes the group into each test id): the shared fixtures would be
    built on every worker and a module's fixture torn down between its tests."""
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError(f"pytest-xdist does not group tests with pytest {pytest.__version__} "
                                f"(pytest-xdist#1386): pip install 'pytest<9.2', or run without workers "
                                f"(make test TEST_WORKERS=0)")


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


@dataclass(frozen=True)
class SmokeSeries:
    """One smoke-profile run of every notebook: its ``--out`` folder, exit code and manifest."""

    out: Path
    code: int
    manifest: dict

    def results(self, stem: str) -> Path:
        """``results/<stem>`` of the run, after checking that notebook ``stem`` ran and succeeded."""
        entry = self.manifest.get("notebooks", {}).get(stem)
        assert entry is not None, f"{stem} did not run in the smoke series (runner exit code {self.code})"
        assert entry["status"] == "ok", (f"{stem} failed in the smoke series, cell {entry.get('cell')}: "
                                         f"{entry.get('error')}; rerun: python -m helpers.run --profile smoke "
                                         f"--only {stem[:2]}")
        return self.out / "results" / stem

    def figures(self, stem: str) -> Path:
        return self.out / "figures" / stem


@pytest.fixture(scope="session")
def smoke_series(require_data, tmp_path_factory) -> SmokeSeries:
    """The smoke profile of every notebook, executed once per test session and shared by every test that reads
    its tables, figures or manifest (``--keep-going``: one failing notebook fails only the tests that read it).
    It uses the default cache, like ``python -m helpers.run --profile smoke``: cold on a clean clone."""
    from helpers.run import main

    out = tmp_path_factory.mktemp("smoke-series")
    code = main(["--profile", "smoke", "--keep-going", "--out", str(out)])
    manifest_path = out / "results" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return SmokeSeries(out, code, manifest)
