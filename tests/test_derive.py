"""models.derive: derived models share unchanged tensors, leave the parent alone, get stable ids that name what
changed, and keep the parent's image features when only the text side changed."""

import numpy as np
import pytest
import torch

from helpers.models import derive


@pytest.fixture
def parent(smoke_model):
    return smoke_model


def test_derive_replaces_one_weight_and_shares_the_rest(parent):
    name = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    old = dict(parent.model.named_parameters())[name].detach().clone()
    new = torch.zeros_like(old)
    d = derive(parent, "edit", weights={name: new})
    got = dict(d.model.named_parameters())
    assert torch.equal(got[name], new) and torch.equal(dict(parent.model.named_parameters())[name], old)
    other = "visual.transformer.resblocks.0.mlp.c_proj.weight"
    assert got[other] is dict(parent.model.named_parameters())[other]  # shared, not copied
    assert got["token_embedding.weight"] is parent.model.token_embedding.weight
    assert d.parent == parent.model_id and d.model_id.startswith(parent.model_id + "+edit:")
    assert d.image_id == d.model_id and d.text_id == parent.text_id  # only the image tower changed
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(d.model.encode_image(x), parent.model.encode_image(x))
        tokens = parent.tokenizer(["a photo of a cat"])
        assert torch.equal(d.model.encode_text(tokens), parent.model.encode_text(tokens))


def test_derived_ids_are_stable_and_name_the_change(parent):
    name = "visual.proj"
    w = dict(parent.model.named_parameters())[name].detach()
    a = derive(parent, "edit", weights={name: w * 2})
    b = derive(parent, "edit", weights={name: w * 2})
    c = derive(parent, "edit", weights={name: w * 3})
    e = derive(parent, "other", weights={name: w * 2})
    assert a.model_id == b.model_id != c.model_id and e.model_id != a.model_id
    t = derive(parent, "text", weights={"text_projection": dict(parent.model.named_parameters())["text_projection"] + 1})
    assert t.image_id == parent.image_id and t.text_id == t.model_id
    assert derive(a, "again", weights={name: w}).parent == a.model_id  # derived from a derived model


def test_derive_checks_names_and_shapes(parent):
    with pytest.raises(KeyError, match="no parameter"):
        derive(parent, "x", weights={"visual.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        derive(parent, "x", weights={"visual.proj": torch.zeros(1)})


def test_derive_with_a_head_and_learned_prompts(parent):
    c, d = 10, parent.model.text_projection.shape[1]
    head = (np.ones((c, d), np.float32), np.zeros(c, np.float32))
    names = [f"class{i}" for i in range(c)]
    m = derive(parent, "coop", class_text=(names, np.eye(c, d, dtype=np.float32)), head=head)
    assert m.image_id == parent.image_id and m.text_id == m.model_id
    assert np.array_equal(m.head[0], head[0]) and parent.head is None
    from helpers.features import text_features

    assert np.array_equal(text_features(m, names, ["{}"]), np.eye(c, d))


def test_benchmark_subset_and_with_model(parent, tmp_cache):
    from helpers.benchmark import load_benchmark

    bench = load_benchmark(parent, "cifar10-test", ["mnist"], max_per_class=6, ood_max_per_class=4, workers=0,
                           progress=False)
    sub = bench.subset(25, seed=0)
    assert len(sub.id) == 25 and len(sub.ood["mnist"]) == 25
    assert sub.datasets["cifar10-test"].paths == sub.id.paths  # the images behind the features, row for row
    assert bench.subset(25, seed=0).id.paths == sub.id.paths != bench.subset(25, seed=1).id.paths
    assert bench.subset(None) is bench and len(bench.subset(10_000).id) == len(bench.id)
    # learned prompts: the same image features; a new image tower: features extracted again, same images
    prompts = derive(parent, "p", class_text=(bench.class_names, np.eye(10, 32, dtype=np.float32)))
    same = sub.with_model(prompts)
    assert same.id is sub.id and same.model is prompts
    w = dict(parent.model.named_parameters())["visual.proj"].detach()
    moved = sub.with_model(derive(parent, "v", weights={"visual.proj": w + 0.1 * torch.randn_like(w)}), num_workers=0)
    assert moved.id.paths == sub.id.paths and not np.allclose(moved.id.image, sub.id.image)
    assert moved.id.meta["key"]["model_id"] == moved.model.image_id


def test_load_benchmark_rejects_a_string_list_and_duplicate_names(parent, tmp_path):
    from helpers.benchmark import load_benchmark

    with pytest.raises(ValueError, match="list of dataset names.*one-character names 'd'"):  # a string split up
        load_benchmark(parent, "cifar10-test", ["d", "t", "d"], workers=0)
    for d in ("a/val", "b/val"):
        (tmp_path / d / "x").mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / d / "x" / "0.png")
    with pytest.raises(ValueError, match="two datasets are named 'val'"):
        load_benchmark(parent, "cifar10-test", [str(tmp_path / "a/val"), str(tmp_path / "b/val")], max_per_class=2,
                       workers=0)
