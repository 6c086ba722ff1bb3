"""Trustworthy pocket CLIP checkpoints (issue 10): damage is detected, reported once and rebuilt (never a raw
``SafetensorError``), a copied cache is reused, and a training nobody asked for is announced first."""

import contextlib
import dataclasses
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import helpers.models.pocket as pocket
from helpers.cache import META
from helpers.models import load_model
from helpers.models.pocket import CONFIGS, pocket_checkpoint, pocket_dir

# tiny-100 cut to one epoch: the same code path as pocket:tiny-100, trained in seconds
FAST = dataclasses.replace(CONFIGS["tiny-100"], epochs=1, eval_max_per_class=2)


@pytest.fixture(scope="module")
def first_training(require_data, tmp_path_factory):
    """FAST trained once by ``pocket_checkpoint`` in an empty private cache: (its folder, what it printed, the
    cache root)."""
    root = tmp_path_factory.mktemp("pocket-cache")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stdout(out):
        m.setenv("CLIPOOD_CACHE", str(root))
        _, ckpt, _ = pocket_checkpoint(FAST, progress=False)
    return ckpt.parent, out.getvalue(), root


@pytest.fixture(scope="module")
def trained(first_training):
    """A checkpoint folder of FAST (read-only for the tests: they copy it)."""
    return first_training[0]


def install(folder, cache):
    """Copy a checkpoint folder into ``cache`` as ``cp -r`` would; its path there."""
    dest = cache / "models" / "pocket" / folder.name
    shutil.copytree(folder, dest)
    return dest


def replace_training(monkeypatch, fn):
    """Replace ``train_pocket`` by ``fn``. The training code's hash is part of the checkpoint's key and would
    change with it, so it is pinned to the real one first."""
    code = pocket.training_code_hash()
    monkeypatch.setattr(pocket, "training_code_hash", lambda: code)
    monkeypatch.setattr(pocket, "train_pocket", fn)


def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a training started although the checkpoint was cached")

    replace_training(monkeypatch, fail)


def fake_training(monkeypatch, trained) -> list:
    """Training replaced by a copy of the ``trained`` folder; the folders it was asked to fill."""
    calls = []

    def copy(cfg, out, **kwargs):
        calls.append(out)
        shutil.copytree(trained, out, dirs_exist_ok=True)

    replace_training(monkeypatch, copy)
    return calls


def test_missing_checkpoint_is_announced_then_trained_and_cached(first_training, monkeypatch, capsys):
    folder, printed, root = first_training
    lines = [x for x in printed.splitlines() if x.startswith("[pocket]")]
    assert len(lines) == 1, printed
    assert f"training pocket:tiny-100 (pocket-vit-xs) now, minutes on CPU: no checkpoint for it in {folder}" \
        in lines[0]
    assert "CLIPOOD_CACHE" in lines[0] and "load_model('pocket-vit-xs', '<folder>/open_clip_model.safetensors')" in lines[0]
    meta = json.loads((folder / META).read_text())  # written after the training: every file's size and sha256
    assert set(meta["files"]) == {"open_clip_model.safetensors", "train.json"}
    assert meta["key"] == {"pocket": folder.name}
    monkeypatch.setenv("CLIPOOD_CACHE", str(root))
    no_training(monkeypatch)
    assert pocket_checkpoint(FAST, progress=False)[1] == folder / "open_clip_model.safetensors"  # cached now
    assert "[pocket]" not in capsys.readouterr().out


def test_training_notice_says_how_long_and_points_at_other_checkpoints(tmp_cache):
    cfg = CONFIGS["tiny-100"]
    other = tmp_cache / "models" / "pocket" / "tiny-100-0123456789ab"
    other.mkdir(parents=True)
    (tmp_cache / "models" / "pocket" / "tiny-100-snapshots-0123456789ab").mkdir()  # another config: not named
    notice = pocket._training_notice(cfg, pocket_dir(cfg))
    assert notice.startswith("[pocket] training pocket:tiny-100 (pocket-vit-xs) now, about 10-40 seconds on CPU")
    assert "(the cache holds tiny-100-0123456789ab: trained with another configuration or precision" in notice
    assert "snapshots" not in notice
    assert "about 6-20 minutes" in pocket._training_notice(CONFIGS["small"], tmp_cache / "x" / "small-1")


def test_copied_cache_is_reused_without_training(trained, tmp_cache, monkeypatch, capsys):
    dest = install(trained, tmp_cache)
    no_training(monkeypatch)
    arch, ckpt, info = pocket_checkpoint(FAST, progress=False)
    assert ckpt == dest / "open_clip_model.safetensors" and info["name"] == "tiny-100"
    assert info == json.loads((trained / "train.json").read_text())
    assert "[pocket]" not in capsys.readouterr().out


def test_truncated_checkpoint_is_reported_and_rebuilt(trained, tmp_cache):
    dest = install(trained, tmp_cache)
    ckpt = dest / "open_clip_model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.warns(UserWarning) as rec:
        arch, path, info = pocket_checkpoint(FAST, progress=False)
    msgs = [str(w.message) for w in rec if "pocket CLIP" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert (f"pocket CLIP checkpoint {dest} is damaged or stale (open_clip_model.safetensors has "
            in msgs[0] and "training pocket:tiny-100 again" in msgs[0])
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) > 0
    loaded = load_model(arch, str(path))
    assert torch.isfinite(loaded.model.visual.proj).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pocket_checkpoint(FAST, progress=False)[1] == path  # intact now


@pytest.mark.parametrize("damage", ["flip", "train.json"])
def test_damaged_checkpoint_files_are_detected(trained, tmp_cache, monkeypatch, damage):
    dest = install(trained, tmp_cache)
    if damage == "flip":  # same size, header intact: only the recorded sha256 can tell
        f = dest / "open_clip_model.safetensors"
        data = bytearray(f.read_bytes())
        data[-1000:-992] = bytes(b ^ 0xFF for b in data[-1000:-992])
        f.write_bytes(bytes(data))
        expected = r"open_clip_model\.safetensors does not match the sha256 recorded in meta\.json"
    else:
        (dest / "train.json").write_text('{"name": "tiny-100", "arch": ')  # cut short
        expected = r"train\.json has \d+ bytes, expected \d+"
    retrained = fake_training(monkeypatch, trained)
    with pytest.warns(UserWarning, match=rf"is damaged or stale \({expected}\); training pocket:tiny-100 again"):
        _, ckpt, info = pocket_checkpoint(FAST, progress=False)
    assert retrained == [dest] and info["name"] == "tiny-100"
    assert (ckpt.read_bytes() == (trained / "open_clip_model.safetensors").read_bytes())


def test_interrupted_training_is_not_mistaken_for_a_checkpoint(trained, tmp_cache, monkeypatch):
    dest = install(trained, tmp_cache)
    (dest / "train.json").unlink()  # written last by the training: without it the run did not finish
    retrained = fake_training(monkeypatch, trained)
    with pytest.warns(UserWarning, match="train.json is missing"):
        pocket_checkpoint(FAST, progress=False)
    assert retrained == [dest]


def test_training_killed_before_its_meta_is_trained_again_with_a_notice(trained, tmp_cache, monkeypatch, capsys):
    """meta.json is written after the training: a folder without it (a training killed after writing its files) is
    no checkpoint, however complete its files look. It is trained again, announced, and no damage is reported."""
    dest = install(trained, tmp_cache)
    (dest / META).unlink()
    retrained = fake_training(monkeypatch, trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pocket_checkpoint(FAST, progress=False)
    assert retrained == [dest] and "[pocket] training pocket:tiny-100" in capsys.readouterr().out
    assert (dest / META).is_file()


def test_load_model_through_a_copied_pocket_cache(smoke_model, tmp_cache, monkeypatch):
    """``cp -r`` of the real tiny-100 checkpoint folder into another cache: found by content, loaded, no training."""
    install(Path(smoke_model.pretrained).parent, tmp_cache)
    no_training(monkeypatch)
    again = load_model("pocket:tiny-100")
    assert again.model_id == smoke_model.model_id and again.pretrained.startswith(str(tmp_cache))
