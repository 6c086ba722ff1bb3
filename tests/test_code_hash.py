"""Cache versions that cannot be forgotten: code hashes follow the code, not its comments; artifact caches
check their content; a profile cannot set a parameter a notebook does not have."""

import ast
import textwrap

import nbformat
import numpy as np
import pytest
import torch

from helpers.cache import cached_tensors, code_hash


def test_code_hash_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    def make(body: str, name: str):
        f = tmp_path / f"{name}.py"
        f.write_text(textwrap.dedent(body))
        monkeypatch.syspath_prepend(str(tmp_path))
        return __import__(name).f

    a = make('def f(x):\n    """Doc."""\n    return x + 1\n', "mod_a")
    b = make('def f(x):\n    """Another doc."""\n    # a comment\n    return x + 1  # why\n', "mod_b")
    c = make('def f(x):\n    return x + 2\n', "mod_c")
    import helpers.cache as cache

    # the same code with other docs and comments hashes alike, wherever it was imported from
    assert code_hash(a) == code_hash(b) != code_hash(c) and len(code_hash(a)) == 16
    assert cache._source_hash(a) == cache._source_hash(b) != cache._source_hash(c)


def test_pocket_key_is_the_same_when_the_module_runs_as_main(tmp_path):
    """`python -m helpers.models.pocket` (the Makefile's model step) must find the checkpoint the notebooks use:
    run as a script its functions live in __main__, which must not change the cache key."""
    import subprocess
    import sys

    from helpers.models.pocket import get_config, pocket_dir

    out = subprocess.run([sys.executable, "-m", "helpers.models.pocket", "--config", "tiny-100", "--where"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == str(pocket_dir(get_config("tiny-100")))


def test_cached_tensors_round_trip_and_rebuild_on_damage(tmp_cache):
    calls = []

    def build():
        calls.append(1)
        return {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"log": [1, 2]}

    key = {"a": 1, "code": "x"}
    t, info, hit = cached_tensors("probes", "m", key, build)
    assert not hit and info == {"log": [1, 2]} and len(calls) == 1
    t2, info2, hit2 = cached_tensors("probes", "m", key, build)
    assert hit2 and info2 == info and torch.equal(t2["w"], t["w"]) and len(calls) == 1
    (f,) = (tmp_cache / "probes").glob("*/tensors.safetensors")
    data = bytearray(f.read_bytes())
    data[-4:] = b"\x00\x01\x02\x03"  # same size, different content
    f.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged or stale"):
        t3, _, hit3 = cached_tensors("probes", "m", key, build)
    assert not hit3 and torch.equal(t3["w"], t["w"]) and len(calls) == 2
    f.write_bytes(f.read_bytes()[:10])  # truncated
    with pytest.warns(UserWarning, match="damaged or stale"):
        cached_tensors("probes", "m", key, build)
    assert len(calls) == 3
    _, _, hit4 = cached_tensors("probes", "m", {**key, "code": "y"}, build)  # another code version: a new entry
    assert not hit4 and len(calls) == 4


def test_pocket_and_feature_keys_contain_the_code():
    from helpers.features import extraction_code_hash
    from helpers.models.pocket import training_code_hash

    assert len(training_code_hash()) == 16 and len(extraction_code_hash()) == 16
    assert training_code_hash() != extraction_code_hash()


# ------------------------------------------------------------------------------------------ profiles
def _parameter_names(nb_path) -> set[str]:
    nb = nbformat.read(nb_path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}


def test_profiles_only_set_parameters_the_notebooks_have():
    """One source for each setting: teaching values live in the notebooks' parameters cells; the other profiles
    are overrides of names those cells define (a misspelt or removed name would be ignored silently)."""
    from helpers.profiles import COMMON, NOTEBOOKS, READ_ONLY, parameters
    from helpers.run import notebooks

    assert all(parameters("teaching", nb.name[:2]) == {"profile": "teaching"} for nb in notebooks())
    for nb in notebooks():
        names = _parameter_names(nb)
        reads_only = nb.name[:2] in READ_ONLY  # 08: no model, no data, only the other notebooks' tables
        assert {"profile", "results_dir", "figures_dir"} | (set() if reads_only else {"model", "on_error"}) <= names, nb.name
        for profile in COMMON:
            unknown = set(parameters(profile, nb.name[:2])) - names
            assert not unknown, f"{profile} profile sets {unknown}, which {nb.name} does not define"
    assert set(NOTEBOOKS["smoke"]) <= {nb.name[:2] for nb in notebooks()}
