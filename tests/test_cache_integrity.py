"""Caches that are verified on load (issue 20, item 4) and a manifest that reads the same on any machine (item 8).

Each cache test edits a cache file so that it still *looks* valid (right shape, unit norms, finite, same key) and
checks that the edit is detected and the value recomputed, equal to an independent computation."""

import json
import types

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers.cache import META, file_record
from helpers.data import get_dataset
from helpers.detectors.neglabel import mine_negative_labels
from helpers.evaluation import metrics_of
from helpers.features import cache_path, extract_features, text_features
from helpers.metrics import ood_report
from helpers.paths import REPO_ROOT
from helpers.report import _portable, record_provenance
from helpers.words import Vocabulary

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _scores(n_id=40, n_ood=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)


# ------------------------------------------------------------------------------- metric reports
def test_edited_metric_report_is_recomputed(tmp_cache):
    s_id, s_ood = _scores()
    expected = 100 * roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert metrics_of(s_id, s_ood, n_boot=20)["auroc"] == pytest.approx(expected)
    (path,) = (tmp_cache / "metrics").glob(f"*/{META}")
    meta = json.loads(path.read_text())
    meta["info"]["auroc"] = 99.0
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="metric-report cache .* is damaged"):
        again = metrics_of(s_id, s_ood, n_boot=20)
    assert again["auroc"] == pytest.approx(expected) and expected < 95
    assert metrics_of(s_id, s_ood, n_boot=20) == again  # rewritten, and served from the cache again


def test_metric_report_without_checksum_is_rebuilt(tmp_cache):
    s_id, s_ood = _scores(seed=1)
    metrics_of(s_id, s_ood, n_boot=0)
    (path,) = (tmp_cache / "metrics").glob(f"*/{META}")
    meta = json.loads(path.read_text())
    del meta["info_sha256"]  # as an older version wrote it, or an edit that dropped it
    path.write_text(json.dumps({**meta, "info": {**meta["info"], "auroc": 99.0}}))
    with pytest.warns(UserWarning, match="metric-report cache .* is damaged or stale"):
        got = metrics_of(s_id, s_ood, n_boot=0)
    expected = 100 * roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert got["auroc"] == pytest.approx(expected)


def test_metric_cache_key_separates_id_from_ood(tmp_cache):
    """[a, b] vs [c] and [a] vs [b, c] have the same bytes end to end; they are different reports."""
    s = np.array([3.0, 0.5, 2.0, 1.0, 0.0])
    assert metrics_of(s[:2], s[2:], n_boot=0)["auroc"] == pytest.approx(100 * 4 / 6)  # 0.5 beats only 0.0
    other = metrics_of(s[:4], s[4:], n_boot=0)
    assert other == pytest.approx(ood_report(s[:4], s[4:], seed=0, n_boot=0))
    assert other["auroc"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------- text embeddings
def test_text_cache_with_swapped_rows_is_recomputed(smoke_model, tmp_cache):
    names, templates = ["cat", "dog", "ship"], ["a photo of a {}."]
    fresh = text_features(smoke_model, names, templates, use_cache=False)
    text_features(smoke_model, names, templates)
    (path,) = (tmp_cache / "text").glob("*/embeddings.npy")
    arr = np.load(path)
    np.save(path, arr[[1, 0, 2]])  # unit norms, finite, right shape: only the content hash can tell
    with pytest.warns(UserWarning, match="text-embedding cache .* is damaged"):
        again = text_features(smoke_model, names, templates)
    np.testing.assert_array_equal(again, fresh)
    assert not np.array_equal(again, arr[[1, 0, 2]])


# ------------------------------------------------------------------------------- NegLabel
def test_neglabel_cache_with_reversed_embeddings_is_recomputed(smoke_model, tmp_cache):
    nouns = ("lamp", "violin", "tundra", "glacier", "umbrella", "pencil", "carpet", "volcano", "mushroom", "teapot")
    vocab = Vocabulary(nouns, ("soft", "bright", "wooden", "striped", "frozen"), "list", "<test>")
    negs = mine_negative_labels(smoke_model, CLASSES, vocab, ratio=0.4, progress=False)
    assert len(negs) == 4 + 2 and not negs.from_cache
    (path,) = (tmp_cache / "neglabel").glob("*/embeddings.npy")
    np.save(path, np.load(path)[::-1])  # same shape, finite, unit norms: only the recorded sha256 can tell
    with pytest.warns(UserWarning, match="NegLabel cache .* is damaged"):
        again = mine_negative_labels(smoke_model, CLASSES, vocab, ratio=0.4, progress=False)
    assert not again.from_cache and again.words == negs.words
    np.testing.assert_array_equal(again.embeddings, negs.embeddings)
    first = text_features(smoke_model, [negs.words[0]], ["the nice {}"], use_cache=False)[0]
    np.testing.assert_allclose(again.embeddings[0], first, rtol=1e-5)
    assert mine_negative_labels(smoke_model, CLASSES, vocab, ratio=0.4, progress=False).from_cache


# ------------------------------------------------------------------------------- local features
def test_nan_in_cached_local_features_is_reported_as_cache_damage(smoke_model, tmp_cache):
    ds = get_dataset("cifar10-test", max_per_class=1)  # 10 images
    opts = dict(kinds=("image", "local"), batch_size=10, num_workers=0, progress=False)
    a = extract_features(smoke_model, ds, **opts)
    a_local = np.array(a.local)  # a copy: a.local maps the file edited below
    folder = cache_path(a.meta["key"])
    local = np.load(folder / "local.npy")
    local[3, 2, 1] = np.nan
    np.save(folder / "local.npy", local)
    meta = json.loads((folder / "meta.json").read_text())  # re-recorded: the hash passes, the values do not
    meta["files"]["local.npy"] = file_record(folder / "local.npy")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"feature cache .* damaged or stale \(local\.npy contains NaN/inf") as record:
        b = extract_features(smoke_model, ds, **opts)
    assert not any("temperature" in str(w.message) for w in record)
    assert not b.meta["from_cache"] and np.isfinite(np.asarray(b.local, np.float32)).all()
    np.testing.assert_array_equal(b.local, a_local)


# ------------------------------------------------------------------------------- portable provenance
def test_cache_and_data_paths_are_recorded_relative_to_their_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path / "d"))
    ckpt = tmp_path / "c" / "models" / "pocket" / "tiny-1" / "open_clip_model.safetensors"
    assert _portable(ckpt) == "$CACHE/models/pocket/tiny-1/open_clip_model.safetensors"
    assert _portable(tmp_path / "d" / "cifar10" / "test") == "$DATA/cifar10/test"
    assert _portable(REPO_ROOT / "results" / "x.csv") == "results/x.csv"
    assert _portable(tmp_path / "elsewhere" / "m.pt") == str(tmp_path / "elsewhere" / "m.pt")
    assert _portable("openai") == "openai"
    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "d" / "cache"))  # nested: the more specific root wins
    assert _portable(tmp_path / "d" / "cache" / "m.pt") == "$CACHE/m.pt"
    assert _portable(tmp_path / "d" / "mnist") == "$DATA/mnist"


def test_record_provenance_writes_no_machine_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path / "data"))
    model = types.SimpleNamespace(model_id="pocket:tiny", arch="ViT-T", checkpoint_sha256="ab", info={},
                                  pretrained=str(tmp_path / "cache" / "models" / "pocket" / "w.safetensors"))
    ds = type("DS", (), {"name": "cifar10-test", "root": tmp_path / "data" / "cifar10" / "test",
                         "fingerprint": lambda self: "ff", "__len__": lambda self: 10})()
    record_provenance(tmp_path / "results", models=[model], datasets=[ds])
    text = (tmp_path / "results" / "_provenance.json").read_text()
    prov = json.loads(text)
    assert prov["models"]["pocket:tiny"]["pretrained"] == "$CACHE/models/pocket/w.safetensors"
    assert prov["datasets"]["cifar10-test"] == {"root": "$DATA/cifar10/test", "images": 10, "file_list_sha256": "ff"}
    assert str(tmp_path) not in text


def test_messages_kept_in_the_manifest_name_no_machine_folder(tmp_path, monkeypatch):
    """Warnings and errors stored in a manifest entry (events, failures) have their cache / data / repository
    folders written as $CACHE, $DATA and repository-relative paths."""
    from helpers.paths import REPO_ROOT
    from helpers.report import portable_text

    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path / "d"))
    entry = {"error": f"CorruptImageError: Cannot decode image {tmp_path}/d/mnist/3/x.png (dataset 'mnist')",
             "events": {"rebuilt": [f"feature cache {tmp_path}/c/features/a is stale"],
                        "warnings": {"UserWarning": {"count": 2, "first": f"see {REPO_ROOT}/notebooks/x.ipynb"}}},
             "seconds": 1.5, "other": f"{tmp_path}/elsewhere/{tmp_path.name}x"}
    got = portable_text(entry)
    assert got["error"] == "CorruptImageError: Cannot decode image $DATA/mnist/3/x.png (dataset 'mnist')"
    assert got["events"]["rebuilt"] == ["feature cache $CACHE/features/a is stale"]
    assert got["events"]["warnings"]["UserWarning"] == {"count": 2, "first": "see notebooks/x.ipynb"}
    assert got["seconds"] == 1.5 and got["other"] == entry["other"]  # not under any root: kept
