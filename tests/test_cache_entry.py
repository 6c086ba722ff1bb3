"""The one cache contract (issue 21, §4): keyed, atomic, verified, rebuilt with a warning, for every kind of entry.

Each test runs on :func:`cached_tensors` (safetensors), :func:`cached_arrays` (``.npy`` arrays and a JSON document)
and a hand-built :class:`CacheEntry`, and checks the content that comes back, not only that something does."""

import json
import warnings

import numpy as np
import pytest
import torch

from helpers import events
from helpers.cache import (
    META,
    CacheEntry,
    cached,
    cached_arrays,
    cached_tensors,
    file_record,
    load_chunk,
    save_chunk,
)


class Builder:
    """A build function that counts its calls and returns content that depends on the key's ``v``."""

    def __init__(self, kind):
        self.kind, self.calls = kind, 0

    def made(self, content):
        self.calls += 1
        return content

    def __call__(self, key):
        base = np.arange(12, dtype=np.float32).reshape(3, 4) * key["v"]
        words = np.array(["cat", "dog", "ship"][: 1 + key["v"] % 3])
        if self.kind == "tensors":
            t, info, hit = cached_tensors("t", "x", key, lambda: self.made(({"w": base}, {"log": [key["v"], 0.5]})))
            return {"w": t["w"].numpy()}, info, hit
        return cached_arrays("a", "x", key, lambda: self.made(({"w": base, "words": words}, {"auroc": 0.25 * key["v"]})),
                             what="test cache")


KINDS = ["tensors", "arrays"]


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def _files(tmp_cache, kind):
    (folder,) = [p for p in (tmp_cache / ("t" if kind == "tensors" else "a")).iterdir() if p.is_dir()]
    return folder, sorted(p for p in folder.iterdir() if p.name != META)


@pytest.mark.parametrize("kind", KINDS)
def test_second_call_hits_the_cache_with_identical_content(tmp_cache, kind):
    build = Builder(kind)
    a, info, hit = build({"v": 2})
    assert not hit and build.calls == 1
    b, info2, hit2 = build({"v": 2})
    assert hit2 and build.calls == 1  # served, not built again
    _same(a, b)
    assert info2 == info and info2 in ({"log": [2, 0.5]}, {"auroc": 0.5})
    assert np.asarray(b["w"]).dtype == np.float32 and np.asarray(b["w"])[2, 3] == 22.0


@pytest.mark.parametrize("kind", KINDS)
def test_changed_key_rebuilds_and_keeps_both_entries(tmp_cache, kind):
    build = Builder(kind)
    a, _, _ = build({"v": 1})
    b, _, hit = build({"v": 3})
    assert not hit and build.calls == 2 and not np.array_equal(a["w"], b["w"])
    again, _, hit = build({"v": 1})
    assert hit and build.calls == 2
    _same(again, a)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", ["truncate", "flip", "remove", "edit-info"])
def test_damaged_entry_is_detected_warned_about_and_rebuilt(tmp_cache, kind, damage, monkeypatch):
    build = Builder(kind)
    good, info, _ = build({"v": 2})
    folder, files = _files(tmp_cache, kind)
    f = files[0]
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip":  # same size: only the sha256 can tell
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "remove":
        f.unlink()
    else:
        meta = json.loads((folder / META).read_text())
        meta["info"] = {k: ([9] if isinstance(v, list) else 9.0) for k, v in meta["info"].items()}
        (folder / META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=rf"{folder.name} is damaged or stale \(.+\); rebuilding it") as rec:
        again, info2, hit = build({"v": 2})
    assert not hit and build.calls == 2
    _same(again, good)
    assert info2 == info
    # the runner's events hook counts it as a rebuilt cache
    monkeypatch.setenv(events.ENV, str(tmp_cache.parent / "events.jsonl"))
    for w in rec:
        events._hook(lambda *a: None)(w.message, w.category, w.filename, w.lineno)
    summary = events.summarize(events.read(tmp_cache.parent / "events.jsonl"))
    assert summary == {"rebuilt": [str(w.message) for w in rec]} and len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build({"v": 2})[2]  # intact again, served


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_build_leaves_no_entry_that_reads_as_valid(tmp_cache, kind, monkeypatch):
    """A build killed between its files and its meta.json (here: an exception in commit) leaves files on disk but
    no valid entry; the next call builds again, without a warning (nothing was damaged, the build did not finish)."""
    build = Builder(kind)
    real = CacheEntry.commit

    def die(self, *a, **k):
        raise KeyboardInterrupt("killed before meta.json")

    monkeypatch.setattr(CacheEntry, "commit", die)
    with pytest.raises(KeyboardInterrupt):
        build({"v": 2})
    folder, files = _files(tmp_cache, kind)
    assert files and not (folder / META).exists()
    monkeypatch.setattr(CacheEntry, "commit", real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _, hit = build({"v": 2})
    assert not hit and build.calls == 2 and np.asarray(got["w"])[2, 3] == 22.0


def test_rebuilding_an_entry_invalidates_it_until_the_new_files_are_committed(tmp_path):
    """An entry being rebuilt over an old one (use_cache=False, or a build after damage) does not read as valid
    while its files are half replaced: begin() withdraws meta.json first."""
    entry = CacheEntry(tmp_path / "e", {"k": 1}, "test cache")

    def build(value):
        def make(e):
            with e.writing("x.npy") as tmp:
                np.save(tmp, np.full(3, value))
            if value == 2:
                raise KeyboardInterrupt
            return e.commit({"value": value})["info"]
        return make

    assert cached(entry, lambda m: m["info"], build(1)) == ({"value": 1}, False)
    with pytest.raises(KeyboardInterrupt):
        cached(entry, lambda m: m["info"], build(2), use_cache=False)
    assert entry.load() is None and np.load(entry.file("x.npy"))[0] == 2  # new file on disk, not served


def test_killed_file_write_leaves_only_a_hidden_temporary_file(tmp_path):
    entry = CacheEntry(tmp_path / "e", {"k": 1})
    entry.begin()
    with pytest.raises(RuntimeError), entry.writing("w.npy") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not entry.file("w.npy").exists() and entry.written == []


def test_meta_records_key_and_every_file_and_never_unpickles(tmp_path):
    entry = CacheEntry(tmp_path / "e", {"k": (1, 2)}, "test cache")
    entry.begin()
    with entry.writing("obj.npy") as tmp:
        np.save(tmp, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    meta = entry.commit({"n": 1})
    assert meta["key"] == {"k": [1, 2]} and meta["files"]["obj.npy"] == file_record(entry.file("obj.npy"))
    from helpers.cache import read_arrays

    with pytest.warns(UserWarning, match="test cache .* is damaged or stale .*allow_pickle"):
        assert entry.load(lambda m: read_arrays(entry, m)) is None
    assert not entry.folder.exists()


def test_stale_key_is_rebuilt_with_a_warning(tmp_cache):
    t, _, _ = cached_tensors("t", "x", {"v": 1}, lambda: ({"w": torch.ones(2)}, {}))
    (folder,) = (tmp_cache / "t").iterdir()
    meta = json.loads((folder / META).read_text())
    meta["key"] = {"v": 5}  # an entry written for another key (a copied or renamed folder)
    (folder / META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="is damaged or stale \\(its key differs"):
        _, _, hit = cached_tensors("t", "x", {"v": 1}, lambda: ({"w": torch.ones(2)}, {}))
    assert not hit


def test_chunks_are_checked_and_a_damaged_one_is_reported(tmp_path):
    path = tmp_path / "parts" / "c-000001.npz"
    save_chunk(path, {"x": np.arange(1000.0)})
    np.testing.assert_array_equal(load_chunk(path, "test chunk")["x"], np.arange(1000.0))
    data = bytearray(path.read_bytes())
    data[400] ^= 0xFF  # inside the array's bytes: zip's CRC-32 sees it
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"test chunk .*c-000001\.npz is damaged or stale \(BadZipFile"):
        assert load_chunk(path, "test chunk") is None
    assert not path.exists()


# ------------------------------------------------------------------ caches that used their own format before
def _images(root, per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    from helpers.data import get_dataset

    return get_dataset(str(root))


def test_decoded_images_are_verified_and_a_damaged_array_is_rebuilt(tmp_path, tmp_cache):
    from helpers.data.arrays import decoded_images

    ds = _images(tmp_path / "imgs")
    x = decoded_images(ds, 8, progress=False)
    assert x.shape == (6, 8, 8, 3) and x.dtype == np.uint8
    (f,) = (tmp_cache / "decoded").glob("*/images.npy")
    assert np.load(f, mmap_mode="r").shape == x.shape  # still a memory-mappable .npy
    np.save(f, x[::-1])  # same shape and size: only the recorded sha256 can tell
    with pytest.warns(UserWarning, match=r"decoded-image cache .* is damaged or stale \(images\.npy does not match"):
        again = decoded_images(ds, 8, progress=False)
    np.testing.assert_array_equal(again, x)
    assert again.flags.writeable
    assert decoded_images(ds, 6, progress=False).shape == (6, 6, 6, 3)  # another size: another entry
    assert len(list((tmp_cache / "decoded").glob("*/images.npy"))) == 2


def test_content_fingerprint_memo_is_verified(tmp_path, tmp_cache):
    import helpers.data.imagefolder as imagefolder

    ds = _images(tmp_path / "imgs")
    value = ds.content_fingerprint()
    assert value == ds._content_sha256()
    (meta_path,) = (tmp_cache / "fingerprints").glob(f"*/{META}")
    meta = json.loads(meta_path.read_text())
    meta["info"]["sha256"] = "0" * 64  # a memo edited to another valid-looking hash
    meta_path.write_text(json.dumps(meta))
    imagefolder._CONTENT.clear()
    with pytest.warns(UserWarning, match="content-fingerprint cache .* is damaged or stale"):
        assert ds.content_fingerprint() == value
