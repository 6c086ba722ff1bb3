"""Adaptation methods (helpers.finetune): k-shot splits, CoOp/LoCoOp, full fine-tuning, notebook 04."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers.data import get_dataset
from helpers.features import extract_features
from helpers.finetune import (
    PromptLearner,
    ZeroShotHead,
    coop_lr,
    coop_model,
    encode_token_embeddings,
    finetune_image_tower,
    kshot_indices,
    locoop_entropy,
    mix_batch,
    per_shots,
    shots_label,
    split_union,
    train_coop,
    weight_change,
    weight_change_by_block,
)
from helpers.tables import mean_std_table, seed_summary

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------------------- few-shot protocol
def test_kshot_indices_take_k_per_class_and_follow_the_seed():
    labels = np.repeat(np.arange(4), [5, 7, 3, 9])
    idx = kshot_indices(labels, 3, seed=1)
    assert np.all(np.diff(idx) > 0)
    assert [int((labels[idx] == c).sum()) for c in range(4)] == [3, 3, 3, 3]
    assert np.array_equal(idx, kshot_indices(labels, 3, seed=1))
    assert any(not np.array_equal(idx, kshot_indices(labels, 3, seed=s)) for s in (2, 3, 4))
    assert np.array_equal(kshot_indices(labels, "full", seed=5), np.arange(len(labels)))
    assert np.array_equal(kshot_indices(labels, None, seed=5), np.arange(len(labels)))
    with pytest.raises(ValueError, match="only 3 image"):
        kshot_indices(labels, 4, seed=0)


def test_shot_labels_and_per_setting_lookup():
    assert [shots_label(s) for s in (1, "16", "full", None)] == ["1", "16", "full", "full"]
    table = {"1": 50, "16": 20, "full": 2}  # what papermill passes (string keys)
    assert per_shots(table, 1) == 50 and per_shots(table, "full") == 2
    assert per_shots({1: 7}, "1") == 7
    with pytest.raises(ValueError, match="coop_epochs has no entry for shots='4'"):
        per_shots(table, 4, "coop_epochs")
    with pytest.raises(ValueError, match="positive"):
        shots_label(0)


def test_split_union_positions_index_the_union():
    splits = {"a": np.array([7, 2, 9]), "b": np.array([2, 4])}
    need, pos = split_union(splits)
    assert need.tolist() == [2, 4, 7, 9]
    for k, idx in splits.items():
        assert np.array_equal(need[pos[k]], idx)


def test_seed_summary_over_seeds_by_hand():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"], "seed": [1, 2, 3, 1], "auroc": [70.0, 80.0, 90.0, 55.0],
                       "fpr95": [1.0, 2.0, 4.0, 9.0], "id_acc": [10.0, 10.0, 10.0, np.nan]})
    out = seed_summary(df, ["method"]).set_index("method")
    assert out.loc["a", "auroc_mean"] == 80.0
    assert out.loc["a", "auroc_std"] == pytest.approx(10.0)  # sample std of 70, 80, 90
    assert out.loc["a", "fpr95_std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert out.loc["b", "auroc_std"] == 0.0 and out.loc["b", "seeds"] == 1
    assert list(out.index) == ["a", "b"]


def test_mean_std_table_formats_each_group_once():
    df = pd.DataFrame({"method": ["b", "b", "a", "a"] * 2 + ["z"], "seed": [1, 2] * 4 + [0],
                       "ood_set": ["x"] * 4 + ["y"] * 4 + ["x"], "auroc": [1.0, 2, 3, 4, 5, 6, 7, 8, 9],
                       "fpr95": [1.0] * 9, "id_acc": [0.0, 1, 2, 3] * 2 + [5.0]})
    table = mean_std_table(seed_summary(df, ["method", "ood_set"]), ["method"])
    assert list(table.columns) == ["method", "id_acc", "x auroc", "x fpr95", "y auroc", "y fpr95"]
    assert table.method.tolist() == ["b", "a", "z"]  # order of appearance, not alphabetical
    assert table.loc[0, "x auroc"] == "1.5 ± 0.7" and table.loc[1, "y auroc"] == "7.5 ± 0.7"
    assert table.loc[1, "id_acc"] == "2.5 ± 0.7"
    assert table.loc[2, "x auroc"] == "9.0" and table.loc[2, "id_acc"] == "5.0"  # one run: no "± 0.0"


# ------------------------------------------------------------------------------------------------------ CoOp
@pytest.fixture(scope="module")
def train_feats(smoke_model):
    ds = get_dataset("cifar10-probe", max_per_class=4)
    return ds, extract_features(smoke_model, ds, kinds=("image", "local"), batch_size=64, num_workers=0,
                                progress=False)


def test_prompt_learner_places_context_between_sos_and_class_name(smoke_model):
    m, tok = smoke_model.model, smoke_model.tokenizer
    learner = PromptLearner(m, tok, NAMES, n_ctx=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        learner.ctx.copy_(torch.randn(5, m.token_embedding.weight.shape[1]))
        # by hand: the placeholder prompt's word embeddings, context rows overwritten
        tokens = tok([f"X X X X X {c}." for c in NAMES])
        manual = m.token_embedding(tokens).clone()
        manual[:, 1:6] = learner.ctx
        seq = learner()
        assert torch.equal(learner.tokens, tokens)
        assert torch.allclose(seq, manual)
        assert torch.equal(seq[:, 0], m.token_embedding(torch.tensor([tokens[0, 0]])).expand(len(NAMES), -1))
        # the text tower applied to the manual sequence, step by step as CLIP.encode_text does
        x = manual + m.positional_embedding
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        pooled = x[torch.arange(len(NAMES)), tokens.argmax(-1)] @ m.text_projection
        assert torch.allclose(encode_token_embeddings(m, seq, learner.tokens), pooled, atol=1e-5)


def test_context_from_words_reproduces_clip_text_encoder(smoke_model):
    m, tok = smoke_model.model, smoke_model.tokenizer
    learner = PromptLearner(m, tok, NAMES, ctx_init="a photo of a")
    assert learner.n_ctx == 4
    with torch.no_grad():
        ours = encode_token_embeddings(m, learner(), learner.tokens)
        clip = m.encode_text(tok([f"a photo of a {c}." for c in NAMES]))
    assert torch.allclose(ours, clip, atol=1e-5)


def test_prompt_too_long_is_a_clear_error(smoke_model):
    with pytest.raises(ValueError, match="exceed the text tower's 32 tokens"):
        PromptLearner(smoke_model.model, smoke_model.tokenizer, NAMES, n_ctx=30)


def test_coop_trains_only_the_context(smoke_model, train_feats):
    ds, f = train_feats
    m = smoke_model.model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {k: p.requires_grad for k, p in m.named_parameters()}
    init = PromptLearner(m, smoke_model.tokenizer, NAMES, generator=torch.Generator().manual_seed(3)).ctx.detach()
    res = train_coop(smoke_model, f.image, f.labels, NAMES, local=f.local, epochs=2, batch_size=16, lr=0.01,
                     warmup_epochs=0, lam=0.25, top_k=2, seed=3)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "a CLIP weight moved"
    assert {k: p.requires_grad for k, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())
    assert res.ctx.shape == init.shape and not np.allclose(res.ctx, init.numpy())
    assert res.text.shape == (10, m.text_projection.shape[1])
    assert np.allclose(np.linalg.norm(res.text, axis=1), 1, atol=1e-5)
    assert len(res.history) == 2 and res.history[0]["entropy"] > 0


def test_coop_is_deterministic_per_seed(smoke_model, train_feats):
    _, f = train_feats
    kw = dict(epochs=2, batch_size=16, lr=0.01, warmup_epochs=0)
    a = train_coop(smoke_model, f.image, f.labels, NAMES, seed=1, **kw)
    b = train_coop(smoke_model, f.image, f.labels, NAMES, seed=1, **kw)
    c = train_coop(smoke_model, f.image, f.labels, NAMES, seed=2, **kw)
    assert np.array_equal(a.ctx, b.ctx) and np.array_equal(a.text, b.text)
    assert not np.allclose(a.ctx, c.ctx)
    # lam = 0 is CoOp: the local features are then not used at all
    d = train_coop(smoke_model, f.image, f.labels, NAMES, local=f.local, lam=0.0, seed=1, **kw)
    assert np.array_equal(a.ctx, d.ctx)


def test_coop_lr_follows_dassl_constant_warmup_then_cosine():
    ref = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.002)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=50)
    expected = [1e-5]  # epoch 0: constant warm-up
    for _ in range(49):
        expected.append(ref.param_groups[0]["lr"])
        ref.step()
        cos.step()
    ours = [coop_lr(e, epochs=50, lr=0.002, warmup_epochs=1, warmup_lr=1e-5) for e in range(50)]
    assert ours == pytest.approx(expected, rel=1e-9)


def test_locoop_entropy_hand_example():
    # one image (label 0), two patches, three classes, top_k = 1
    logits = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]])
    y = torch.tensor([0])
    p = np.exp([0.0, 2.0, 1.0]) / np.exp([0.0, 2.0, 1.0]).sum()  # only the second patch's top-1 is not 0
    expected = -(p * np.log(p + 1e-5)).sum()
    assert float(locoop_entropy(logits, y, top_k=1)) == pytest.approx(expected, rel=1e-6)
    assert float(locoop_entropy(logits, torch.tensor([1]), top_k=2)) == 0.0  # class 1 is in both patches' top-2


def test_locoop_needs_local_features_and_a_sensible_top_k(smoke_model, train_feats):
    _, f = train_feats
    with pytest.raises(ValueError, match="needs the local features"):
        train_coop(smoke_model, f.image, f.labels, NAMES, lam=0.25, top_k=2, epochs=1)
    with pytest.raises(ValueError, match="top_k=200 must lie in"):
        train_coop(smoke_model, f.image, f.labels, NAMES, local=f.local, lam=0.25, epochs=1)


# ------------------------------------------------------------------------------------------ full fine-tuning
def test_head_initialised_from_text_embeddings():
    text = F.normalize(torch.randn(4, 8), dim=-1)
    head = ZeroShotHead(text, scale=50.0)
    assert torch.equal(head.weight.data, 50.0 * text) and torch.equal(head.bias.data, torch.zeros(4))
    x = torch.randn(3, 8)
    assert torch.allclose(head(x), 50.0 * F.normalize(x, dim=-1) @ text.T, atol=1e-5)
    rnd = ZeroShotHead(text, 50.0, init="random", generator=torch.Generator().manual_seed(0))
    assert 0.01 < float(rnd.weight.detach().std()) < 0.03  # N(0, 0.02²); PLP's truncation at ±2 is absolute, i.e. none
    with pytest.raises(ValueError, match="'text' or 'random'"):
        ZeroShotHead(text, 1.0, init="zeros")


def test_finetune_before_any_step_is_clip_zero_shot(smoke_model, train_feats, tmp_cache):
    ds, f = train_feats
    from helpers import detectors
    from helpers.features import text_features

    text = text_features(smoke_model, NAMES, ["a photo of a {}."])
    ft = finetune_image_tower(smoke_model, ds, text, epochs=0)
    scale = min(float(smoke_model.model.logit_scale.detach().exp()), 100.0)
    weight, bias = ft.loaded.head
    assert np.allclose(weight, scale * text, atol=1e-6) and not bias.any()
    ft_feats = extract_features(ft.loaded, ds, kinds=("image",), batch_size=64, num_workers=0, progress=False)
    assert ft.loaded.model_id.startswith(smoke_model.model_id + "+ft:") and ft.loaded.parent == smoke_model.model_id
    assert np.allclose(ft_feats.image, f.image, atol=1e-5)
    head = detectors.get("head", score="energy").fit(ft.loaded, NAMES)
    z = scale * f.image.astype(np.float64) @ text.T
    assert np.allclose(head.predict_logits(ft_feats), z, atol=1e-4)
    assert np.allclose(head(ft_feats), np.log(np.exp(z).sum(1)), atol=1e-4)


def test_finetune_is_deterministic_and_leaves_the_base_model_alone(smoke_model, train_feats, tmp_cache):
    ds, _ = train_feats
    text = F.normalize(torch.randn(10, smoke_model.model.text_projection.shape[1]), dim=-1).numpy()
    before = {k: v.clone() for k, v in smoke_model.model.state_dict().items()}
    kw = dict(epochs=2, batch_size=16, lr=1e-3, augment=True)
    a = finetune_image_tower(smoke_model, ds, text, seed=1, **kw)
    b = finetune_image_tower(smoke_model, ds, text, seed=1, use_cache=False, **kw)  # trained again, not read
    c = finetune_image_tower(smoke_model, ds, text, seed=2, **kw)
    cached = finetune_image_tower(smoke_model, ds, text, seed=1, **kw)
    assert not a.from_cache and not b.from_cache and cached.from_cache
    assert all(torch.equal(before[k], v) for k, v in smoke_model.model.state_dict().items())
    assert smoke_model.model.visual is not a.loaded.model.visual
    # the text tower is shared with the base model, not copied or trained
    assert a.loaded.model.token_embedding.weight is smoke_model.model.token_embedding.weight
    assert a.loaded.text_id == smoke_model.text_id and a.loaded.image_id == a.loaded.model_id
    assert a.loaded.model_id == b.loaded.model_id == cached.loaded.model_id != c.loaded.model_id
    assert np.array_equal(a.loaded.head[0], b.loaded.head[0])
    by_block = weight_change_by_block(smoke_model.model.visual, a.loaded.model.visual).set_index("group")
    drift = weight_change(smoke_model.model.visual, a.loaded.model.visual)
    assert (drift.relative_change > 0).all() and "transformer.resblocks.0" in set(drift.group)
    groups = list(dict.fromkeys(drift.group))
    assert groups[0] == "conv1" and groups[-1] == "proj"  # input-to-output order
    p = "transformer.resblocks.0.mlp.c_fc.weight"
    w0, w1 = dict(smoke_model.model.visual.named_parameters())[p], dict(a.loaded.model.visual.named_parameters())[p]
    rel = float(drift.set_index("parameter").loc[p, "relative_change"])
    assert rel == pytest.approx(float(np.linalg.norm((w1 - w0).detach().numpy()) / np.linalg.norm(w0.detach().numpy())),
                                rel=1e-5)
    block = drift[drift.group == "transformer.resblocks.0"]  # size-weighted root mean square of the block
    expected = math.sqrt((block.numel * block.relative_change ** 2).sum() / block.numel.sum())
    assert by_block.loc["transformer.resblocks.0", "relative change"] == pytest.approx(expected)
    # the fine-tuned features go through the one extraction path and equal a direct forward pass
    feats = extract_features(a.loaded, ds, kinds=("image",), batch_size=64, num_workers=0, progress=False)
    x = torch.stack([smoke_model.preprocess(ds.load_rgb(i)) for i in range(5)])
    with torch.no_grad():
        direct = F.normalize(a.loaded.model.visual(x), dim=-1).numpy()
    assert np.allclose(feats.image[:5], direct, atol=1e-5)


def test_smoothed_targets_match_torch_cross_entropy():
    rng = np.random.default_rng(0)
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    logits = torch.randn(6, 5)
    xm, t = mix_batch(x, y, 5, rng, mixup=0.0, cutmix=0.0, smoothing=0.1)
    assert torch.equal(xm, x)
    ours = -(t * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=0.1))
    xm, t = mix_batch(x, y, 5, np.random.default_rng(1), mixup=0.8, cutmix=0.0, smoothing=0.0)
    lam = float(np.random.default_rng(1).beta(0.8, 0.8))
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(t, lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.flip(0), 5).float())
    y6 = torch.arange(6)
    xm, t = mix_batch(x, y6, 6, np.random.default_rng(2), mixup=0.0, cutmix=1.0, smoothing=0.0)
    pasted = (xm != x).any(1)  # (B, H, W) pixels that came from the reversed batch, one box for the batch
    assert pasted.any() and torch.equal(pasted[0], pasted[3])
    lam = 1 - float(pasted[0].float().mean())
    assert torch.equal(xm[0][:, pasted[0]], x[5][:, pasted[0]])
    assert t[0, 0] == pytest.approx(lam) and t[0, 5] == pytest.approx(1 - lam)
    assert torch.allclose(t.sum(1), torch.ones(6))


def test_features_subset_keeps_rows_aligned(train_feats):
    _, f = train_feats
    s = f.subset([3, 0, 7])
    assert np.array_equal(s.labels, f.labels[[3, 0, 7]]) and s.paths == [f.paths[i] for i in (3, 0, 7)]
    assert np.array_equal(s.image, f.image[[3, 0, 7]]) and np.array_equal(s.local, f.local[[3, 0, 7]])
    assert s.preproj is None


def test_coop_model_is_a_derived_model_with_learned_prompts(smoke_model, train_feats, tmp_cache):
    """CoOp's result scores through the ordinary MCM detector: the derived model answers text_features with the
    learned prompts for its class names, reuses the parent's image features, and is cached."""
    from helpers import detectors
    from helpers.features import text_features

    _, f = train_feats
    model, prompts = coop_model(smoke_model, f, NAMES, epochs=2, batch_size=8, seed=1)
    assert model.image_id == smoke_model.image_id and model.text_id != smoke_model.text_id
    assert np.array_equal(text_features(model, NAMES, ["whatever {}"]), prompts.text)
    assert not np.array_equal(text_features(model, NAMES[:3], ["a photo of a {}"]), prompts.text[:3])  # other names
    direct = train_coop(smoke_model, f.image, f.labels, NAMES, epochs=2, batch_size=8, seed=1)
    np.testing.assert_allclose(prompts.text, direct.text, atol=1e-6)
    mcm = detectors.get("mcm").fit(model, NAMES)
    cos = f.image.astype(np.float64) @ prompts.text.astype(np.float64).T
    np.testing.assert_allclose(mcm(f), np.exp(cos).max(1) / np.exp(cos).sum(1), rtol=1e-6)
    again, _ = coop_model(smoke_model, f, NAMES, epochs=2, batch_size=8, seed=1)
    assert again.model_id == model.model_id


# ------------------------------------------------------------------------------------------------- notebook
@pytest.mark.notebook
def test_notebook_04_runs_in_the_smoke_profile(smoke_series):
    manifest = json.loads((smoke_series.out / "results" / "manifest.json").read_text())
    res = smoke_series.results("04_finetune")
    assert manifest["notebooks"]["04_finetune"]["status"] == "ok"
    summary = pd.read_csv(res / "summary.csv")
    assert {"zero-shot", "linear probe", "PLP", "fine-tune", "CoOp", "LoCoOp"} <= set(summary.method)
    scores = pd.read_csv(res / "scores.csv", dtype={"shots": str})
    runs = scores.drop_duplicates(["method", "shots", "seed"])
    assert len(runs) == 1 + 5 * 3 * 2  # zero-shot + 5 methods x {1, 16, full} x 2 seeds (smoke)
    ft = scores[scores.method == "fine-tune"]
    assert ft.model_id.str.contains(r"\+ft:").all() and ft.model_id.nunique() == 6  # one derived model per run
    claims = pd.read_csv(res / "claims.csv")
    assert set(claims.verdict) <= {"holds", "reversed", "within noise"} and len(claims) == 4 * 3
    assert (claims.verdict.eq("holds") == (claims["CI low"] > 0)).all()
    assert (claims.verdict.eq("reversed") == (claims["CI high"] < 0)).all()
    assert list(smoke_series.figures("04_finetune").glob("*.png"))
