"""SeTAR: the edit equals an explicit SVD truncation and leaves the parent alone; the fast search makes the naive
search's choices (also with the published per-batch objective); one block searched greedily is an exhaustive
search; the objective per batch is the image-weighted mean of the batches' losses; SeTAR+FT starts from the
original weights (from the published edit when asked); LoRA starts as the identity update, scaled by α/r (the
official α = 8); the published search split is built from an ImageNet train folder; the augmented training
images are random crops keyed by step and row, the same on every rank."""

import numpy as np
import pytest
import torch

from helpers import setar
from helpers.data import get_dataset
from helpers.setar.search import objective


@pytest.fixture(scope="module")
def split(smoke_model):
    return setar.make_split(smoke_model, get_dataset("cifar10-probe", max_per_class=4))


def test_edit_equals_an_explicit_svd_truncation(smoke_model):
    name = setar.param_name("visual", 1)
    w = dict(smoke_model.model.named_parameters())[name].detach().clone()
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    n = min(w.shape)
    for ratio in (0.05, 0.25, 0.4):
        r = int(round(ratio * n))
        expected = (u[:, :n - r] * s[:n - r]) @ vh[:n - r]
        edited = setar.setar_model(smoke_model, {("visual", 1): ratio})
        got = dict(edited.model.named_parameters())[name].detach().double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.linalg.matrix_rank(got, tol=1e-4 * s[0]) == n - r
        assert edited.model_id.startswith(smoke_model.model_id + "+setar:") and edited.image_id == edited.model_id
        assert edited.text_id == smoke_model.text_id  # only the image tower changed
    assert torch.equal(dict(smoke_model.model.named_parameters())[name], w)  # the parent is the revert
    assert setar.setar_model(smoke_model, {("visual", 1): 0.0}) is smoke_model
    a = setar.setar_model(smoke_model, {("visual", 1): 0.2, ("text", 0): 0.1})
    b = setar.setar_model(smoke_model, {("text", 0): 0.1, ("visual", 1): 0.2})
    assert a.model_id == b.model_id != setar.setar_model(smoke_model, {("visual", 1): 0.2}).model_id
    assert a.text_id == a.model_id and setar.dropped_rank((768, 192), 0.05) == 10


def test_published_b16_edit_drops_its_ranks_on_a_vit_b16_and_is_refused_by_a_shallower_model():
    """Also SeTAR+FT's start from the published edit (the official config's lora_settings), whatever the search
    chose: the edited model and, per edited matrix, the dropped components as factors (W' + B·A = W)."""
    from helpers.models import load_model

    b16 = load_model("ViT-B-16/random-img32-ctx8")
    edit, edited, factors = setar.setar_ft_start(b16, {("visual", 7): 0.4}, from_published=True)
    assert edit == setar.PUBLISHED_B16 and edited.model_id.startswith(b16.model_id + "+setar:")
    assert set(factors) == {setar.param_name(t, b) for t, b in setar.PUBLISHED_B16}
    params, original = dict(edited.model.named_parameters()), dict(b16.model.named_parameters())
    for (tower, block), ratio in setar.PUBLISHED_B16.items():
        name = setar.param_name(tower, block)
        w = params[name].detach().double().numpy()
        n = min(w.shape)  # 768 (image MLP 3072 x 768), 512 (text MLP 2048 x 512)
        s = np.linalg.svd(w, compute_uv=False)
        assert np.linalg.matrix_rank(w, tol=1e-4 * s[0]) == n - setar.dropped_rank(w.shape, ratio), (tower, block)
        b, a, scale = factors[name]
        assert scale == 1.0 and b.shape[1] == a.shape[0] == setar.dropped_rank(w.shape, ratio)
        np.testing.assert_allclose(w + (b @ a).numpy(), original[name].detach().double().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"sets text block 2, but ViT-B-16/random-seed0-img32-ctx8-layers2 has 2 "
                                         r"text blocks.*use_published_edit"):
        setar.setar_model(load_model("ViT-B-16/random-img32-ctx8-layers2"), setar.PUBLISHED_B16)
    with pytest.raises(ValueError, match="ft_from_published_edit"):
        setar.setar_ft_start(load_model("ViT-B-16/random-img32-ctx8-layers2"), {}, from_published=True)


def test_objective_equals_the_formula():
    rng = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=rng), dim=-1)
    loc = torch.nn.functional.normalize(torch.randn(6, 5, 8, generator=rng), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=rng), dim=-1)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, ce, ent = objective(img, loc, txt, y, scale=10.0, lam=0.3, top_k=2)
    logits = (10.0 * img @ txt.T).numpy()
    ce_ref = float(np.mean([-np.log(np.exp(logits[i, y[i]]) / np.exp(logits[i]).sum()) for i in range(6)]))
    ents = []
    for i in range(6):
        for p in range(5):
            z = 10.0 * loc[i, p] @ txt.T
            if int(y[i]) not in z.topk(2).indices.tolist():  # an OOD patch
                q = torch.softmax(z, 0)
                ents.append(float(-(q * torch.log(q + 1e-5)).sum()))
    assert ce == pytest.approx(ce_ref, rel=1e-5) and ent == pytest.approx(np.mean(ents), rel=1e-5)
    assert loss == pytest.approx(ce_ref - 0.3 * np.mean(ents), rel=1e-5)


def _brute_objective(img, loc, txt, y, scale, lam, top_k):
    """LoCoOp's loss of one batch, written out with numpy: mean CE; mean entropy of the patches whose top-k classes
    exclude the label (0 when there is none)."""
    img, loc, txt, y = img.double().numpy(), loc.double().numpy(), txt.double().numpy(), y.numpy()
    logits = scale * img @ txt.T
    ce = np.mean([np.log(np.exp(z).sum()) - z[c] for z, c in zip(logits, y)])
    ents = []
    for i in range(len(y)):
        for z in scale * loc[i] @ txt.T:
            if y[i] not in np.argsort(-z)[:top_k]:
                q = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                ents.append(-(q * np.log(q + 1e-5)).sum())
    ent = float(np.mean(ents)) if ents else 0.0
    return ce - lam * ent, ce, ent


def test_objective_per_batch_is_the_image_weighted_mean_of_the_batch_losses():
    """The official search repeats each batch's loss once per image and averages (batches of 512 in split order):
    10 rows in batches of 4 give weights 4, 4, 2."""
    rng = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(10, 8, generator=rng), dim=-1)
    loc = torch.nn.functional.normalize(torch.randn(10, 6, 8, generator=rng), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=rng), dim=-1)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    args = dict(scale=10.0, lam=0.4, top_k=2)
    parts = [_brute_objective(img[a:b], loc[a:b], txt, y[a:b], 10.0, 0.4, 2) for a, b in [(0, 4), (4, 8), (8, 10)]]
    expected = (4 * np.array(parts[0]) + 4 * np.array(parts[1]) + 2 * np.array(parts[2])) / 10
    np.testing.assert_allclose(objective(img, loc, txt, y, batch_size=4, **args), expected, rtol=1e-5)
    whole = _brute_objective(img, loc, txt, y, 10.0, 0.4, 2)
    for bs in (None, 10, 512):  # one batch: the whole split (512 is the published default)
        np.testing.assert_allclose(objective(img, loc, txt, y, batch_size=bs, **args), whole, rtol=1e-5)
    assert objective(img, loc, txt, y, **args) == objective(img, loc, txt, y, batch_size=setar.SEARCH_BATCH, **args)
    assert setar.SEARCH_BATCH == 512
    assert parts[0][1] != parts[1][1] and expected[1] == pytest.approx(whole[1], rel=1e-6)  # CE: the split's mean
    assert abs(expected[2] - whole[2]) > 1e-3  # the entropy part is not: the batches matter


@pytest.mark.parametrize("batch_size", [setar.SEARCH_BATCH, 16])  # one batch of 40; batches of 16, 16, 8
def test_fast_search_makes_the_naive_searchs_choices(smoke_model, split, batch_size):
    ratios = (0.0, 0.1, 0.2, 0.3)
    naive = setar.naive_search(smoke_model, split, ratios=ratios, top_k=3, batch_size=batch_size)
    fast = setar.fast_search(smoke_model, split, ratios=ratios, top_k=3, batch_size=batch_size)
    assert fast.edit == naive.edit
    np.testing.assert_allclose(fast.log["loss"], naive.log["loss"], rtol=1e-5)
    steps = naive.log.groupby("step").first()
    # pocket:tiny-100 has 2 image blocks and 1 text block: image tower top-down, then the text tower
    assert list(zip(steps.tower, steps.block)) == [("visual", 1), ("visual", 0), ("text", 0)]
    # the published rule: a step keeps the ratio that lowered the running best last (else 0)
    best = np.inf
    for _, g in naive.log.groupby("step"):
        chosen = 0.0
        for _, r in g.iterrows():
            if best == np.inf or r.loss < best - 1e-9 * abs(best):
                best, chosen = r.loss, r.ratio
        tower, block = g.tower.iloc[0], int(g.block.iloc[0])
        assert naive.edit.get((tower, block), 0.0) == chosen


def test_a_cached_search_returns_the_fresh_searchs_log(smoke_model, split, tmp_cache):
    import pandas as pd

    fresh = setar.run_search(smoke_model, split, ratios=(0.0, 0.2), top_k=3)
    cached = setar.run_search(smoke_model, split, ratios=(0.0, 0.2), top_k=3)
    assert cached.edit == fresh.edit and cached.seconds == fresh.seconds  # read back, not re-run
    # the same table, columns in the same order: the notebook writes it to search_log.csv
    pd.testing.assert_frame_equal(cached.log, fresh.log)
    assert list(fresh.log.columns)[:4] == ["step", "tower", "block", "ratio"]


def test_one_block_greedy_is_exhaustive(smoke_model, split, monkeypatch):
    """Searching a single block, the greedy choice is the argmin of the objective over all ratios, evaluated here by
    brute force on freshly edited models (or 0 when no ratio beats the unedited model)."""
    import helpers.setar.search as search

    monkeypatch.setattr(search, "_order", lambda model: [("visual", 1)])
    ratios = (0.0, 0.1, 0.2, 0.3, 0.4)
    result = setar.fast_search(smoke_model, split, ratios=ratios, lam=0.5, top_k=3)
    values = {}
    scale = min(float(smoke_model.model.logit_scale.detach().exp()), 100.0)
    for r in ratios:
        m = setar.setar_model(smoke_model, {("visual", 1): r}).model
        with torch.no_grad():
            from helpers.features import encode_images

            f = encode_images(m.visual, split.images, ("image", "local"))
            t = torch.nn.functional.normalize(m.encode_text(split.tokens).float(), dim=-1)
        values[r] = objective(f["image"], f["local"], t, split.labels, scale=scale, lam=0.5, top_k=3)[0]
    best = min(values, key=values.get)
    assert result.edit.get(("visual", 1), 0.0) == (best if values[best] < values[0.0] else 0.0)


def test_setar_ft_starts_at_the_original_weights_and_lora_at_zero(smoke_model):
    from torch.nn.utils import parametrize  # noqa: F401 - the mechanism under test

    edit = {("visual", 1): 0.25, ("text", 0): 0.1}
    edited = setar.setar_model(smoke_model, edit)
    factors = setar.setar_factors(smoke_model, edit)
    model, trainable = setar.with_updates(edited, factors)
    params = dict(smoke_model.model.named_parameters())
    for name in factors:
        owner, _, attr = name.rpartition(".")
        w = getattr(model.get_submodule(owner), attr)
        torch.testing.assert_close(w, params[name], rtol=0, atol=1e-6)  # W_edited + B·A = W
        assert not torch.allclose(dict(edited.model.named_parameters())[name], params[name], atol=1e-4)
    assert len(trainable) == 2 * len(factors) and factors[setar.param_name("visual", 1)][2] == 1.0  # no scaling
    lora = setar.lora_factors(smoke_model, r=4, alpha=1)
    assert len(lora) == 3 and all(float(b.abs().sum()) == 0 and s == 0.25 for b, _, s in lora.values())
    lmodel, _ = setar.with_updates(smoke_model, lora)
    name = setar.param_name("text", 0)
    torch.testing.assert_close(lmodel.get_submodule(name.rpartition(".")[0]).weight, params[name])
    assert all(p.requires_grad for p in smoke_model.model.parameters())  # the shared base is not frozen for good


def test_lora_scale_is_alpha_over_r_and_the_official_default_is_a_quarter(smoke_model):
    """The official LoRA run never passes its config's α = 16 to peft, whose default α = 8 applies: 8 / 32."""
    name = setar.param_name("visual", 0)
    w = dict(smoke_model.model.named_parameters())[name].detach()
    for r, alpha in [(32, 8), (32, 16), (4, 1), (4, 2)]:
        lora = setar.lora_factors(smoke_model, r=r, alpha=alpha)
        assert all(s == alpha / r and a.shape[0] == r for _, a, s in lora.values())
        b, a, s = lora[name]
        b = torch.randn(b.shape, generator=torch.Generator().manual_seed(0))  # a trained, non-zero B
        model, _ = setar.with_updates(smoke_model, {name: (b, a, s)})
        got = model.get_submodule(name.rpartition(".")[0]).weight.detach()
        torch.testing.assert_close(got, w + alpha / r * (b @ a), rtol=0, atol=1e-5)  # W + (α/r)·B·A
    assert {s for _, _, s in setar.lora_factors(smoke_model).values()} == {0.25}  # r = 32, α = 8: 0.25


def test_setar_ft_starts_from_the_searched_edit_or_from_the_published_one(smoke_model, monkeypatch):
    """``from_published`` picks the published edit (here a stand-in that fits the 2-block pocket CLIP; the real
    B/16 edit on a ViT-B/16: the test above), else the searched edit; the factors follow the edit picked."""
    import helpers.setar.finetune as ft

    searched, published = {("visual", 1): 0.25}, {("visual", 0): 0.1, ("text", 0): 0.2}
    monkeypatch.setattr(ft, "PUBLISHED_B16", published)
    for from_published, expected in [(True, published), (False, searched)]:
        edit, edited, factors = setar.setar_ft_start(smoke_model, searched, from_published=from_published)
        assert edit == expected and edited.model_id == setar.setar_model(smoke_model, expected).model_id
        assert set(factors) == {setar.param_name(t, b) for t, b in expected}


def _write_imagefolder(root, files):
    from PIL import Image

    for i, f in enumerate(files):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (i % 256, 7, 9)).save(root / f)


def test_published_split_is_built_from_an_imagenet_train_folder(tmp_path):
    import json
    import re

    from helpers.errors import DatasetNotPreparedError

    files = setar.published_files()
    wnids = [f.split("/")[0] for f in files]
    assert len(files) == 1000 and len(set(wnids)) == 1000 and files == sorted(files)
    assert all(re.fullmatch(rf"{w}/{w}_\d+\.JPEG", f) for w, f in zip(wnids, files))  # <wnid>/<wnid>_<n>.JPEG
    stored = json.loads(setar.split.LIST_FILE.read_text())
    assert stored["source"]["repo"] == "X1AOX1A/SeTAR" and len(stored["source"]["commit"]) == 40
    # a train folder with every listed file and others that are not listed
    root = tmp_path / "train"
    extra = [f"{w}/{w}_999999.JPEG" for w in wnids[:3]]
    _write_imagefolder(root, files + extra)
    ds = setar.published_split(str(root))
    assert ds.paths == files and len(ds) == 1000  # only the listed files, in ImageFolder order
    assert ds.classes == sorted(wnids) and ds.labels.tolist() == [sorted(wnids).index(w) for w in wnids]
    assert ds.class_names[0] == "tench"  # n01440764
    assert np.abs(np.asarray(ds.load_rgb(5), dtype=int) - [5, 7, 9]).max() <= 3  # the 6th file written (JPEG)
    # a folder that lacks some of the listed files: the error names them
    for f in files[10:13]:
        (root / f).unlink()
    with pytest.raises(DatasetNotPreparedError, match="lacks 3 of the 1000") as err:
        setar.published_split(str(root))
    assert all(f in str(err.value) for f in files[10:13])


def test_augmented_training_images_are_crops_keyed_by_step_and_row(smoke_model, monkeypatch):
    """augment=False: the rows of the preprocessed centre crops (the package's former training images).
    augment=True: each image read from its file and cropped/flipped as keyed by (seed, step, row): the same call
    gives the same crops, another step other crops; a rank of two reads only its slice, with the crops one process
    draws for those rows. With scale (1, 1) on square images the crop is the whole image, so each augmented image
    is the centre crop or its mirror image."""
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    ds = get_dataset("cifar10-probe", max_per_class=2)
    split = setar.make_split(smoke_model, ds)
    centre = torch.stack([smoke_model.preprocess(ds.load_rgb(i)) for i in range(len(ds))])  # the old path
    idx = torch.tensor([3, 0, 7, 12, 5])
    fixed = setar.train_images(smoke_model, split.images, augment=False)
    assert torch.equal(fixed(idx, 0), centre[idx]) and torch.equal(fixed(idx, 4), centre[idx])
    aug = setar.train_images(smoke_model, None, ds, augment=True, seed=1, workers=0)
    a, a_again, b = aug(idx, 0), aug(idx, 0), aug(idx, 1)
    assert a.shape == centre[idx].shape and torch.equal(a, a_again)
    assert all(not torch.allclose(a[i], b[i]) for i in range(len(idx)))  # another step: other crops of each row
    assert all(not torch.allclose(a[i], centre[idx[i]], atol=1e-3) for i in range(len(idx)))
    assert not torch.allclose(setar.train_images(smoke_model, None, ds, seed=2, workers=0)(idx, 0), a)
    whole = setar.train_images(smoke_model, None, ds, crop_scale=(1.0, 1.0), seed=1, workers=0)
    flips = []
    for step in range(6):
        x = whole(idx, step)
        for i, row in enumerate(idx):
            same, mirror = torch.allclose(x[i], centre[row], atol=1e-5), torch.allclose(x[i], centre[row].flip(-1), atol=1e-5)
            assert same or mirror
            flips.append(mirror and not same)
    assert 0 < sum(flips) < len(flips)  # both occur
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert torch.equal(aug(idx, 0), a[3:]) and torch.equal(fixed(idx, 0), centre[idx[3:]])  # rank 1 of 2: rows 3:5
    monkeypatch.setenv("RANK", "0")
    assert torch.equal(aug(idx, 0), a[:3])
    with pytest.raises(ValueError, match="pass dataset="):
        setar.train_images(smoke_model, split.images, None, augment=True)


def test_training_updates_moves_only_the_edited_weights(smoke_model, split, tmp_cache):
    edit = {("visual", 1): 0.25}
    edited = setar.setar_model(smoke_model, edit)
    before = {k: v.detach().clone() for k, v in smoke_model.model.named_parameters()}
    name = setar.param_name("visual", 1)
    tuned = {}
    for augment in (True, False):
        ft, log = setar.finetuned_model(edited, smoke_model, setar.setar_factors(smoke_model, edit), "setar-ft",
                                        split.images, split.labels, split.tokens, dataset=split.dataset,
                                        augment=augment, epochs=2, batch_size=20, lr=0.05, workers=0)
        changed = {k for k, v in ft.model.named_parameters() if not torch.equal(v, before[k])}
        assert changed == {name} and len(log) == 2
        assert all(torch.equal(v, before[k]) for k, v in smoke_model.model.named_parameters())
        again, _ = setar.finetuned_model(edited, smoke_model, setar.setar_factors(smoke_model, edit), "setar-ft",
                                         split.images, split.labels, split.tokens, dataset=split.dataset,
                                         augment=augment, epochs=2, batch_size=20, lr=0.05, workers=2)
        assert again.model_id == ft.model_id  # cached (the threads that read the images are not in the key)
        tuned[augment] = dict(ft.model.named_parameters())[name].detach()
    assert not torch.allclose(tuned[True], tuned[False], atol=1e-6)  # the augmented run saw other images
    with pytest.raises(ValueError, match="pass dataset="):
        setar.finetuned_model(edited, smoke_model, setar.setar_factors(smoke_model, edit), "setar-ft", split.images,
                              split.labels, split.tokens, epochs=1, batch_size=20)


@pytest.mark.notebook
def test_notebook_05_runs_in_the_smoke_profile(smoke_series):
    import pandas as pd

    res = smoke_series.results("05_setar")
    scores = pd.read_csv(res / "scores.csv")
    assert set(scores.method) == {"zero-shot", "SeTAR", "SeTAR+FT", "LoRA"}
    assert scores[scores.method != "zero-shot"].model_id.str.contains(r"\+(?:setar|setar-ft|lora):").all()
    timing = pd.read_csv(res / "search_time.csv")
    assert len(timing) == 2 and (timing.candidates == timing.candidates.iloc[0]).all()
    ratios = pd.read_csv(res / "selected_ratios.csv")
    assert len(ratios) == 2 and ratios.drop(columns="split seed").isin([0.0, 0.1, 0.2]).all().all()
    assert {"selected_ratios.png", "search_objective.png", "spectrum.png"} <= {
        p.name for p in smoke_series.figures("05_setar").glob("*.png")}
