"""Trustworthy feature caches (issue 10): resuming with another chunk size, NaN/inf and same-size damage in cached
arrays, truncated chunks, damaged text caches, custom transforms in the cache key, and the CLI's error line."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from hooks import count_extracted, interrupt_after
from torchvision.transforms import Compose, Lambda

import helpers.features as hf
from helpers.cache import META, file_record
from helpers.data import get_dataset
from helpers.features import cache_key, cache_path, extract_features, text_features

KINDS = ("image", "preproj", "local")
FAST = dict(batch_size=8, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def model(smoke_model):
    return smoke_model  # pocket:tiny-100


@pytest.fixture(scope="module")
def ds(require_data):
    return get_dataset("cifar10-test", max_per_class=5)  # 50 images


def assert_same(a, b, kinds=KINDS):
    assert len(a) == len(b) and a.paths == b.paths
    for k in (*kinds, "labels"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


# ------------------------------------------------------------------------------------ chunks
def test_resume_with_another_chunk_size_does_not_duplicate_rows(model, ds, tmp_cache, monkeypatch, capsys):
    full = extract_features(model, ds, kinds=KINDS, chunk_size=16, use_cache=False, **FAST)
    folder = cache_path(full.meta["key"])
    shutil.rmtree(folder)
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            extract_features(model, ds, kinds=KINDS, chunk_size=16, **FAST)
    assert [p.name for p in (folder / "parts").iterdir()] == ["chunk16-000000.npz"]
    capsys.readouterr()
    resumed = extract_features(model, ds, kinds=KINDS, chunk_size=24, **FAST)  # 24 is a multiple of the batch
    assert "discarding 1 chunk(s)" in capsys.readouterr().out
    assert len(resumed) == len(ds) == 50 and len(resumed.image) == len(resumed.local) == 50
    assert sorted(resumed.paths) == sorted(set(resumed.paths))  # every image once
    assert_same(resumed, full)
    assert extract_features(model, ds, kinds=KINDS, chunk_size=16, **FAST).meta["from_cache"]


def test_chunk_with_other_rows_is_recomputed(model, ds, tmp_cache, monkeypatch):
    full = extract_features(model, ds, kinds=("image",), chunk_size=16, use_cache=False, **FAST)
    folder = cache_path(full.meta["key"])
    shutil.rmtree(folder)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            extract_features(model, ds, kinds=("image",), chunk_size=16, **FAST)
    parts = folder / "parts"
    shutil.copy(parts / "chunk16-000000.npz", parts / "chunk16-000001.npz")  # chunk 1 holding chunk 0's rows
    calls = count_extracted(monkeypatch)
    with pytest.warns(UserWarning, match=r"chunk16-000001\.npz is damaged or stale \(ValueError: it does not hold rows 16\.\.31"):
        again = extract_features(model, ds, kinds=("image",), chunk_size=16, **FAST)
    assert sum(calls) == len(ds) - 16
    assert_same(again, full, ("image",))


def test_merge_refuses_rows_that_do_not_cover_the_images_once(model, ds, tmp_cache):
    """The merge's own check, whatever the chunks: every image exactly once, or no cache is written."""
    full = extract_features(model, ds, kinds=("image",), chunk_size=32, use_cache=False, **FAST)
    folder = cache_path(full.meta["key"])
    shutil.rmtree(folder)
    parts = folder / "parts"
    rows = np.arange(len(ds))
    part = {"image": full.image[:32], "index": rows[:32], "failed": np.zeros(0, np.int64)}
    hf._save_part(parts / "a.npz", part)
    hf._save_part(parts / "b.npz", {**part, "index": rows[16:48]})  # rows 16..31 twice, 48, 49 missing
    with pytest.raises(RuntimeError, match="do not cover the 50 images of cifar10-test exactly once"):
        hf._merge(folder, full.meta["key"], ds.with_transform(model.preprocess), ("image",),
                  [parts / "a.npz", parts / "b.npz"], 1.0, 64)
    assert not (folder / "meta.json").exists() and not parts.exists()


def test_truncated_chunk_is_reported_by_name_and_recomputed(model, ds, tmp_cache, monkeypatch):
    full = extract_features(model, ds, kinds=KINDS, chunk_size=16, use_cache=False, **FAST)
    folder = cache_path(full.meta["key"])
    shutil.rmtree(folder)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            extract_features(model, ds, kinds=KINDS, chunk_size=16, **FAST)
    chunk = folder / "parts" / "chunk16-000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:300])  # cut short: BadZipFile when read
    calls = count_extracted(monkeypatch)
    with pytest.warns(UserWarning, match=r"feature chunk .*chunk16-000001\.npz is damaged or stale \(BadZipFile"):
        resumed = extract_features(model, ds, kinds=KINDS, chunk_size=16, **FAST)
    assert sum(calls) == len(ds) - 16  # chunk 0 kept, chunk 1 recomputed with the two never written
    assert_same(resumed, full)


# ---------------------------------------------------------------------------- cached arrays
def test_nan_in_a_cached_array_is_detected_and_rebuilt(model, ds, tmp_cache):
    a = extract_features(model, ds, kinds=("image", "preproj"), **FAST)
    folder = cache_path(a.meta["key"])
    arr = np.load(folder / "image.npy")
    arr[3, 0] = np.nan
    np.save(folder / "image.npy", arr)  # same size, same shape: only the content check sees it
    with pytest.warns(UserWarning, match=r"image\.npy does not match the sha256"):
        b = extract_features(model, ds, kinds=("image", "preproj"), **FAST)
    assert not b.meta["from_cache"] and np.isfinite(b.image).all()
    assert_same(a, b, ("image", "preproj"))

    # inf written together with a matching meta.json (as a buggy writer would): the finiteness check sees it
    arr = np.load(folder / "preproj.npy")
    arr[0, 1] = np.inf
    np.save(folder / "preproj.npy", arr)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["preproj.npy"] = file_record(folder / "preproj.npy")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"feature cache of cifar10-test .* is damaged or stale \(preproj\.npy contains NaN/inf"):
        c = extract_features(model, ds, kinds=("image", "preproj"), **FAST)
    assert not c.meta["from_cache"] and np.isfinite(c.preproj).all()
    assert_same(a, c, ("image", "preproj"))


def test_same_size_corruption_is_detected_and_rebuilt(model, ds, tmp_cache):
    a = extract_features(model, ds, kinds=("image",), **FAST)
    folder = cache_path(a.meta["key"])
    f = folder / "image.npy"
    size = f.stat().st_size
    with open(f, "r+b") as fh:  # flip bytes in place, in the data part
        fh.seek(size - 200)
        chunk = fh.read(8)
        fh.seek(size - 200)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    assert f.stat().st_size == size
    with pytest.warns(UserWarning, match="damaged or stale"):
        b = extract_features(model, ds, kinds=("image",), **FAST)
    assert not b.meta["from_cache"]
    assert_same(a, b, ("image",))


def test_damaged_text_cache_is_recomputed(model, tmp_cache):
    names, templates = ["cat", "dog"], ["a photo of a {}."]
    t = text_features(model, names, templates)
    (path,) = (tmp_cache / "text").glob("*/embeddings.npy")
    arr = np.load(path)
    arr[1, 3] *= 8  # same size, finite: an edited value
    np.save(path, arr)
    with pytest.warns(UserWarning, match="text-embedding cache .* is damaged"):
        again = text_features(model, names, templates)
    np.testing.assert_array_equal(again, t)
    arr = np.load(path)
    arr[0, 0] = np.nan
    np.save(path, arr)
    meta = json.loads((path.parent / META).read_text())
    meta["files"]["embeddings.npy"] = file_record(path)  # the hash passes: the NaN check catches it
    (path.parent / META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="NaN/inf"):
        np.testing.assert_array_equal(text_features(model, names, templates), t)


# --------------------------------------------------------------------------------- transforms
def test_custom_transforms_get_their_own_cache_key(model, ds):
    base = model.preprocess

    def with_step(fn):
        return dataclasses.replace(model, preprocess=Compose([Lambda(fn), base]))

    def f(img):
        return img

    def g(img):
        return img.rotate(90)

    def resized(k):
        return lambda img: img.resize((k, k))

    a, b = with_step(f), with_step(g)
    assert repr(a.preprocess) == repr(b.preprocess)  # every Lambda prints "Lambda()": the repr alone cannot tell
    variants = [a, b, with_step(lambda i: i), with_step(lambda i: i.rotate(180)),  # two lambdas on one line
                with_step(resized(32)), with_step(resized(64)), model]
    paths = {cache_path(cache_key(m, ds, ("image",), "fp32")) for m in variants}
    assert len(paths) == len(variants)
    # the same code and values give the same id (and cache hits), in this process and the next
    assert with_step(f).transform_id == a.transform_id
    assert with_step(resized(32)).transform_id == variants[4].transform_id
    # the standard open_clip transform keeps its repr as id, so existing caches stay valid
    assert model.transform_id == " ".join(repr(base).split())
    assert "Lambda" not in model.transform_id and "code:" not in model.transform_id


def test_custom_transform_features_are_not_served_from_another_transforms_cache(model, ds, tmp_cache):
    ident = dataclasses.replace(model, preprocess=Compose([Lambda(lambda img: img), model.preprocess]))
    flipped = dataclasses.replace(model, preprocess=Compose([Lambda(lambda img: img.transpose(0)), model.preprocess]))
    a = extract_features(ident, ds, kinds=("image",), **FAST)
    b = extract_features(flipped, ds, kinds=("image",), **FAST)
    assert not b.meta["from_cache"] and not np.allclose(a.image, b.image)
    with torch.no_grad():
        x = flipped.preprocess(ds.load_rgb(0))[None]
        np.testing.assert_allclose(b.image[0], torch.nn.functional.normalize(
            model.model.encode_image(x), dim=-1)[0].numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------- CLI
def test_features_cli_prints_one_error_line(tmp_cache, capsys, require_data):
    common = ["--workers", "0", "--device", "cpu", "--max-per-class", "1"]
    assert hf.main(["--model", "pocket-vit-xs/random", "--dataset", "no-such-dataset", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown dataset 'no-such-dataset'") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert hf.main(["--model", "pocket:teaching", "--dataset", "cifar10-test", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown pocket CLIP 'pocket:teaching': it was renamed pocket:small")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
