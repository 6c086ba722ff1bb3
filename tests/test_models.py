import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers.errors import UnknownModelError, WeightsUnavailableError
from helpers.models import load_model, split_spec
from helpers.models.pocket import PROFILES, train_pocket


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


def test_pocket_training_is_deterministic(require_data, tmp_path):
    cfg = PROFILES["smoke"]
    r1 = train_pocket(cfg, tmp_path / "a", progress=False)
    r2 = train_pocket(cfg, tmp_path / "b", progress=False)
    w1 = load_file(tmp_path / "a" / "open_clip_model.safetensors")
    w2 = load_file(tmp_path / "b" / "open_clip_model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert r1["zero_shot_accuracy"] == r2["zero_shot_accuracy"]
    assert [e["loss"] for e in r1["log"]] == [e["loss"] for e in r2["log"]]
    # it did learn something: the loss went down
    assert r1["log"][-1]["loss"] < r1["log"][0]["loss"] or len(r1["log"]) == 1


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
