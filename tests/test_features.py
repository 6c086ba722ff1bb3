import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hooks import count_extracted, interrupt_after

from helpers.data import get_dataset
from helpers.errors import NonFiniteError
from helpers.features import cache_key, cache_path, extract_features, text_features
from helpers.models import load_model
from helpers.paths import REPO_ROOT

KINDS = ("image", "preproj", "local")


@pytest.fixture(scope="module")
def small_ds(require_data):
    return get_dataset("cifar10-test", max_per_class=5)


def by_hand(model, x):
    """Global, pre-projection and GL-MCM local features computed with explicit tensor algebra."""
    v = model.visual
    with torch.no_grad():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(len(x), 1, -1), h], 1) + v.positional_embedding
        h = v.ln_pre(h)
        for blk in v.transformer.resblocks[:-1]:
            h = blk(h)
        last = v.transformer.resblocks[-1]
        w = h.shape[-1]
        wq, wk, wv = last.attn.in_proj_weight.split(w)
        bq, bk, bv = last.attn.in_proj_bias.split(w)
        y = last.ln_1(h)
        heads = last.attn.num_heads
        q = (y @ wq.T + bq).view(len(x), -1, heads, w // heads).transpose(1, 2)
        k = (y @ wk.T + bk).view(len(x), -1, heads, w // heads).transpose(1, 2)
        val = (y @ wv.T + bv).view(len(x), -1, heads, w // heads).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / (w // heads) ** 0.5, -1) @ val
        att = att.transpose(1, 2).reshape(len(x), -1, w) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        out = h + att
        out = out + last.mlp(last.ln_2(out))
        pre = v.ln_post(out[:, 0])
        value = h + (y @ wv.T + bv) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        value = value + last.mlp(last.ln_2(value))
        local = F.normalize(v.ln_post(value[:, 1:]) @ v.proj, dim=-1)
        return F.normalize(pre @ v.proj, dim=-1), pre, local


def test_features_match_explicit_computation(smoke_model, small_ds, tmp_cache):
    feats = extract_features(smoke_model, small_ds, kinds=KINDS, batch_size=16, num_workers=0, progress=False)
    x = torch.stack([smoke_model.preprocess(small_ds.load_rgb(i)) for i in range(6)])
    g, pre, local = by_hand(smoke_model.model, x)
    with torch.no_grad():
        enc = F.normalize(smoke_model.model.encode_image(x), dim=-1)
    np.testing.assert_allclose(feats.image[:6], enc.numpy(), atol=1e-5)
    np.testing.assert_allclose(feats.image[:6], g.numpy(), atol=1e-5)
    np.testing.assert_allclose(feats.preproj[:6], pre.numpy(), atol=1e-5)
    np.testing.assert_allclose(feats.local[:6].astype(np.float32), local.numpy(), atol=2e-3)  # float16 storage
    assert feats.local.shape == (len(small_ds), 16, smoke_model.model.visual.proj.shape[1])
    assert feats.labels.tolist() == small_ds.labels.tolist() and feats.paths == small_ds.paths


def test_second_call_is_a_cache_hit(smoke_model, small_ds, tmp_cache):
    a = extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False)
    b = extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False)
    assert not a.meta["from_cache"] and b.meta["from_cache"]
    np.testing.assert_array_equal(a.image, b.image)


def test_cache_key_changes_with_model_transform_and_files(smoke_model, small_ds, require_data):
    base = cache_key(smoke_model, small_ds, ("image",), "fp32")
    other_model = load_model("pocket-vit-xs", "random", seed=1)
    bilinear = load_model("pocket:tiny-100", interpolation="bilinear")
    fewer = get_dataset("cifar10-test", max_per_class=4)
    assert bilinear.model_id == smoke_model.model_id  # same weights...
    for key in (cache_key(other_model, small_ds, ("image",), "fp32"),  # ...different weights
                cache_key(bilinear, small_ds, ("image",), "fp32"),  # different resize interpolation
                cache_key(smoke_model, fewer, ("image",), "fp32"),  # different file list
                cache_key(smoke_model, small_ds, ("image", "local"), "fp32"),
                cache_key(smoke_model, small_ds, ("image",), "bf16")):
        assert cache_path(key) != cache_path(base)
    assert cache_path(cache_key(smoke_model, small_ds, ("image",), "fp32")) == cache_path(base)


def test_resume_after_interruption(smoke_model, small_ds, tmp_cache, monkeypatch):
    full = extract_features(smoke_model, small_ds, kinds=KINDS, chunk_size=16, batch_size=8, num_workers=0,
                            progress=False, use_cache=False)
    folder = cache_path(cache_key(smoke_model, small_ds.with_transform(smoke_model.preprocess), KINDS, "fp32"))
    shutil.rmtree(folder)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            extract_features(smoke_model, small_ds, kinds=KINDS, chunk_size=16, batch_size=8, num_workers=0,
                             progress=False)
    assert sorted(p.name for p in (folder / "parts").iterdir()) == ["chunk16-000000.npz", "chunk16-000001.npz"]
    assert not (folder / "meta.json").exists()  # an interrupted cache is never mistaken for a complete one
    calls = count_extracted(monkeypatch)
    resumed = extract_features(smoke_model, small_ds, kinds=KINDS, chunk_size=16, batch_size=8, num_workers=0,
                               progress=False)
    assert sum(calls) == len(small_ds) - 32  # only the chunks that were missing
    for k in KINDS + ("labels",):
        np.testing.assert_array_equal(getattr(resumed, k), getattr(full, k))


def test_truncated_or_stale_cache_is_rebuilt(smoke_model, small_ds, tmp_cache):
    a = extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False)
    folder = cache_path(a.meta["key"])
    data = (folder / "image.npy").read_bytes()
    (folder / "image.npy").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="damaged or stale"):
        b = extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False)
    assert not b.meta["from_cache"]
    np.testing.assert_array_equal(a.image, b.image)
    meta = json.loads((folder / "meta.json").read_text())
    meta["key"]["files"] = "something else"  # a cache written for other content
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="damaged or stale"):
        c = extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False)
    assert not c.meta["from_cache"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract_features(smoke_model, small_ds, kinds=("image",), num_workers=0, progress=False).meta["from_cache"]


def test_nan_features_raise_and_write_nothing(small_ds, tmp_cache):
    broken = load_model("pocket-vit-xs", "random")
    with torch.no_grad():
        broken.model.visual.proj.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN/inf in 'image' features of cifar10-test"):
        extract_features(broken, small_ds, kinds=("image",), num_workers=0, progress=False)
    assert not list(tmp_cache.rglob("meta.json"))


def test_corrupt_image_is_skipped_and_recorded(smoke_model, tmp_path, tmp_cache):
    src = get_dataset("cifar10-test", max_per_class=2)
    root = tmp_path / "imgs"
    for s in src.samples:
        (root / src.classes[s.label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(src.root / s.path, root / s.path)
    victim = sorted((root / "cat").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    ds = get_dataset(str(root), on_error="skip")
    f = extract_features(smoke_model, ds, kinds=("image",), num_workers=0, progress=False)
    assert f.failed == [str(victim.relative_to(root))]
    assert len(f) == len(ds) - 1 and str(victim.relative_to(root)) not in f.paths
    assert f.labels.tolist() == [ds.classes.index(p.split("/")[0]) for p in f.paths]


def test_text_features_ensemble(smoke_model, tmp_cache):
    names = ["cat", "dog"]
    t = text_features(smoke_model, names, ["a photo of a {}.", "a {}."])
    per = text_features(smoke_model, names, ["a photo of a {}.", "a {}."], ensemble=False)
    with torch.no_grad():
        tok = smoke_model.tokenizer(["a photo of a cat.", "a cat."])
        e = F.normalize(smoke_model.model.encode_text(tok), dim=-1)
    np.testing.assert_allclose(per[0], e.numpy(), atol=1e-5)
    np.testing.assert_allclose(t[0], F.normalize(e.mean(0), dim=-1).numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(t, axis=1), 1)


def test_torchrun_shards_merge_to_single_process_result(smoke_model, tmp_path, require_data):
    """Two gloo processes under torchrun produce the same arrays as one process."""
    from helpers.paths import cache_dir

    env = {**os.environ, "CLIPOOD_CACHE": str(tmp_path / "dist"), "CLIPOOD_DIST_BACKEND": "gloo",
           "OMP_NUM_THREADS": "1"}
    common = ["--model", "pocket:tiny-100", "--dataset", "cifar10-test", "--max-per-class", "9", "--kinds", "image",
              "preproj", "local", "--chunk-size", "16", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    # the pocket checkpoint lives in the shared cache: point both runs at it through a symlink
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "models").symlink_to(cache_dir() / "models")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                "-m", "helpers.features", *common, "--out", str(tmp_path / "two.npz")]
    subprocess.run(torchrun, env=env, check=True, cwd=REPO_ROOT, capture_output=True)
    env1 = {**env, "CLIPOOD_CACHE": str(tmp_path / "single")}
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "models").symlink_to(cache_dir() / "models")
    subprocess.run([sys.executable, "-m", "helpers.features", *common, "--out", str(tmp_path / "one.npz")],
                   env=env1, check=True, cwd=REPO_ROOT, capture_output=True)
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert len(one["labels"]) == 90
    for k in ("labels", "image", "preproj", "local"):
        np.testing.assert_array_equal(two[k], one[k])
