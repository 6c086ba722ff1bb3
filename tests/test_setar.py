"""SeTAR: the edit equals an explicit SVD truncation and leaves the parent alone; the fast search makes the naive
search's choices; one block searched greedily is an exhaustive search; SeTAR+FT starts from the original
weights; LoRA starts as the identity update."""

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
    from helpers.models import load_model

    b16 = load_model("ViT-B-16/random-img32-ctx8")
    edited = setar.setar_model(b16, setar.PUBLISHED_B16)
    params = dict(edited.model.named_parameters())
    for (tower, block), ratio in setar.PUBLISHED_B16.items():
        w = params[setar.param_name(tower, block)].detach().double().numpy()
        n = min(w.shape)  # 768 (image MLP 3072 x 768), 512 (text MLP 2048 x 512)
        s = np.linalg.svd(w, compute_uv=False)
        assert np.linalg.matrix_rank(w, tol=1e-4 * s[0]) == n - setar.dropped_rank(w.shape, ratio), (tower, block)
    with pytest.raises(ValueError, match=r"sets text block 2, but ViT-B-16/random-seed0-img32-ctx8-layers2 has 2 "
                                         r"text blocks.*use_published_edit"):
        setar.setar_model(load_model("ViT-B-16/random-img32-ctx8-layers2"), setar.PUBLISHED_B16)


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


def test_fast_search_makes_the_naive_searchs_choices(smoke_model, split):
    ratios = (0.0, 0.1, 0.2, 0.3)
    naive = setar.naive_search(smoke_model, split, ratios=ratios, top_k=3)
    fast = setar.fast_search(smoke_model, split, ratios=ratios, top_k=3)
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
    lora = setar.lora_factors(smoke_model, r=4, alpha=2)
    assert len(lora) == 3 and all(float(b.abs().sum()) == 0 and s == 0.5 for b, _, s in lora.values())
    lmodel, _ = setar.with_updates(smoke_model, lora)
    name = setar.param_name("text", 0)
    torch.testing.assert_close(lmodel.get_submodule(name.rpartition(".")[0]).weight, params[name])
    assert all(p.requires_grad for p in smoke_model.model.parameters())  # the shared base is not frozen for good


def test_training_updates_moves_only_the_edited_weights(smoke_model, split, tmp_cache):
    edit = {("visual", 1): 0.25}
    edited = setar.setar_model(smoke_model, edit)
    before = {k: v.detach().clone() for k, v in smoke_model.model.named_parameters()}
    ft, log = setar.finetuned_model(edited, smoke_model, setar.setar_factors(smoke_model, edit), "setar-ft",
                                    split.images, split.labels, split.tokens, epochs=2, batch_size=20, lr=0.05)
    name = setar.param_name("visual", 1)
    changed = {k for k, v in ft.model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {name} and len(log) == 2
    assert all(torch.equal(v, before[k]) for k, v in smoke_model.model.named_parameters())
    again, _ = setar.finetuned_model(edited, smoke_model, setar.setar_factors(smoke_model, edit), "setar-ft",
                                     split.images, split.labels, split.tokens, epochs=2, batch_size=20, lr=0.05)
    assert again.model_id == ft.model_id  # cached: the same merged weights


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
