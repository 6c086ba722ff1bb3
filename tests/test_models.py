import dataclasses
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers.errors import UnknownModelError, WeightsUnavailableError
from helpers.models import load_model, split_spec
from helpers.models.pocket import CONFIGS, train_pocket


def test_unknown_architecture_lists_close_matches():
    with pytest.raises(UnknownModelError, match=r"ViT-B-61.*Close matches: \[.*'ViT-B-16'"):
        load_model("ViT-B-61/openai")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(UnknownModelError, match=r"opnai.*known tags for ViT-B-16.*close matches: \['openai'\]"):
        load_model("ViT-B-16", "opnai")
    with pytest.raises(UnknownModelError, match="checkpoint file /nonexistent/w.pt does not exist"):
        load_model("ViT-B-16", "/nonexistent/w.pt")


def test_weights_unavailable_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="cannot be downloaded.*copy the Hugging Face cache"):
        load_model("ViT-B-32/openai", cache_dir=str(tmp_path))


def test_split_spec():
    assert split_spec("ViT-H-14/laion2b_s32b_b79k") == ("ViT-H-14", "laion2b_s32b_b79k")
    assert split_spec("ViT-B-16", "/x/y.pt") == ("ViT-B-16", "/x/y.pt")


def test_local_checkpoint_takes_the_open_clip_path(smoke_model, tmp_path):
    path = tmp_path / "copy.safetensors"
    path.write_bytes(open(smoke_model.pretrained, "rb").read())
    again = load_model(smoke_model.arch, str(path))
    assert again.model_id == smoke_model.model_id  # identified by content hash, not by path
    for (k, a), (_, b) in zip(smoke_model.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_pickle_checkpoints_never_execute_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model("pocket-vit-xs", str(bad))
    assert not (tmp_path / "pwned").exists()


def test_random_weights_are_seeded():
    a = load_model("pocket-vit-xs", "random", seed=3).model.visual.proj
    b = load_model("pocket-vit-xs", "random", seed=3).model.visual.proj
    c = load_model("pocket-vit-xs", "random", seed=4).model.visual.proj
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pocket_training_is_deterministic(smoke_model, tmp_path, tmp_cache):
    cfg = dataclasses.replace(CONFIGS["tiny-100"], epochs=0.25, batch_size=16, eval_max_per_class=2)  # 16 steps
    r1 = train_pocket(cfg, tmp_path / "a", progress=False)
    r2 = train_pocket(cfg, tmp_path / "b", progress=False)
    w1 = load_file(tmp_path / "a" / "open_clip_model.safetensors")
    w2 = load_file(tmp_path / "b" / "open_clip_model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert r1["zero_shot_accuracy"] == r2["zero_shot_accuracy"]
    assert [e["loss"] for e in r1["log"]] == [e["loss"] for e in r2["log"]]
    # the full smoke run did learn something: the loss went down and zero-shot accuracy is above chance (10%)
    log = smoke_model.info["log"]
    assert len(log) >= 2 and log[-1]["loss"] < log[0]["loss"]
    assert smoke_model.info["zero_shot_accuracy"] > 0.1


def test_pocket_loads_like_any_checkpoint(smoke_model):
    assert smoke_model.arch == "pocket-vit-xs"
    assert smoke_model.pretrained.endswith("open_clip_model.safetensors")
    assert smoke_model.model_id.startswith("pocket-vit-xs/sha256:")
    assert 0.0 <= smoke_model.info["zero_shot_accuracy"] <= 1.0
    tokens = smoke_model.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 32)
    img = smoke_model.preprocess(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (50, 40)))
    assert tuple(img.shape) == (3, 32, 32)
    assert np.isfinite(smoke_model.model.encode_image(img[None]).detach().numpy()).all()


# ------------------------------------------------------------------------------- spec errors and paths
@pytest.mark.parametrize("spec", ["pocket-teaching", "pocket-small", "pocket_small"])
def test_pocket_architecture_typo_suggests_the_pocket_spec(spec):
    with pytest.raises(UnknownModelError, match=r"Did you mean pocket:small\?") as e:
        load_model(spec)
    assert "pocket:<config>" in str(e.value) and not str(e.value).endswith("..")


def test_unknown_pocket_config_lists_close_matches():
    with pytest.raises(UnknownModelError, match=r"'pocket:tiny100' \(did you mean pocket:tiny-100") as e:
        load_model("pocket:tiny100")
    assert "Known: pocket:small, " in str(e.value) and not str(e.value).endswith("..")
    with pytest.raises(UnknownModelError, match="it was renamed pocket:small"):
        load_model("pocket:teaching")  # the name the teaching model had before
    with pytest.raises(UnknownModelError, match=r"Unknown pocket CLIP 'pocket:zzz'\. Known: pocket:small"):
        load_model("pocket:zzz")


def test_split_spec_accepts_checkpoint_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert split_spec("pocket-vit-xs//abs/w.safetensors") == ("pocket-vit-xs", "/abs/w.safetensors")
    assert split_spec("pocket-vit-xs/~/w.safetensors") == ("pocket-vit-xs", str(tmp_path / "w.safetensors"))
    assert split_spec("pocket-vit-xs", "~/w.safetensors") == ("pocket-vit-xs", str(tmp_path / "w.safetensors"))
    assert split_spec("pocket-vit-xs/ckpt/w.safetensors") == ("pocket-vit-xs", "ckpt/w.safetensors")
    assert split_spec("hf-hub:timm/x") == ("hf-hub:timm/x", None)


def test_checkpoint_paths_with_tilde_and_relative(smoke_model, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "ckpt").mkdir(parents=True)
    shutil.copy(smoke_model.pretrained, home / "ckpt" / "w.safetensors")
    monkeypatch.setenv("HOME", str(home))
    for loaded in (load_model("pocket-vit-xs", "~/ckpt/w.safetensors"), load_model("pocket-vit-xs/~/ckpt/w.safetensors"),
                   load_model(f"pocket-vit-xs/{home}/ckpt/w.safetensors")):
        assert loaded.model_id == smoke_model.model_id  # the same weights, found through ~ or //abs
        assert loaded.pretrained == str(home / "ckpt" / "w.safetensors")
    monkeypatch.chdir(home)
    assert load_model("pocket-vit-xs/ckpt/w.safetensors").model_id == smoke_model.model_id
    with pytest.raises(UnknownModelError) as e:
        load_model("pocket-vit-xs/ckpt/x.safetensors")
    assert (f"ckpt/x.safetensors does not exist (a relative path is taken from the current folder, {os.getcwd()}; "
            f"a notebook runs in notebooks/)") in str(e.value)


def test_random_spec_options_round_trip_through_the_model_id():
    from helpers.models import load_model

    m = load_model("ViT-B-16/random-seed3-img32-ctx8")
    assert m.model_id == "ViT-B-16/random-seed3-img32-ctx8"
    assert m.model.visual.image_size == (32, 32) and m.model.context_length == 8
    again = load_model(m.model_id)  # the id is a spec that rebuilds the same weights
    a, b = m.model.visual.conv1.weight, again.model.visual.conv1.weight
    assert torch.equal(a, b) and not torch.equal(a, load_model("ViT-B-16/random-seed4-img32-ctx8").model.visual.conv1.weight)


def test_random_spec_layers_keeps_the_first_blocks_of_each_tower():
    from helpers.models import load_model

    full = load_model("ViT-B-16/random-seed3-img32-ctx8")
    cut = load_model("ViT-B-16/random-seed3-img32-ctx8-layers2")
    assert cut.model_id == "ViT-B-16/random-seed3-img32-ctx8-layers2" and load_model(cut.model_id).model_id == cut.model_id
    for a, b in ((full.model.visual.transformer, cut.model.visual.transformer),
                 (full.model.transformer, cut.model.transformer)):
        assert (len(a.resblocks), len(b.resblocks), b.layers) == (12, 2, 2)
        for k, v in b.resblocks.state_dict().items():  # the same random draws, fewer blocks
            assert torch.equal(v, a.resblocks.state_dict()[k]), k
    # the forward pass is the full model's with the later blocks removed: compare with a hand-cut copy
    full.model.visual.transformer.resblocks = full.model.visual.transformer.resblocks[:2]
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(cut.model.encode_image(x), full.model.encode_image(x), atol=1e-6)
    with pytest.raises(ValueError, match="has 12 blocks per tower"):
        load_model("ViT-B-16/random-layers13")
