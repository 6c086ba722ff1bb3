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
    encode_token_embeddings,
    eval_indices,
    eval_subset,
    finetune_image_tower,
    kshot_indices,
    locoop_entropy,
    mean_std,
    mean_std_table,
    mix_batch,
    ood_rows,
    per_shots,
    shots_label,
    split_union,
    subset_features,
    train_coop,
    weight_change,
)
from helpers.metrics import ood_metrics

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


def test_eval_indices_cap_and_seed():
    assert np.array_equal(eval_indices(10, None), np.arange(10))
    assert np.array_equal(eval_indices(10, 50), np.arange(10))
    a = eval_indices(100, 20, seed=3)
    assert len(a) == 20 == len(set(a.tolist())) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, eval_indices(100, 20, seed=3))


def test_mean_std_over_seeds_by_hand():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"], "seed": [1, 2, 3, 1], "auroc": [70.0, 80.0, 90.0, 55.0],
                       "fpr95": [1.0, 2.0, 4.0, 9.0], "id_acc": [10.0, 10.0, 10.0, np.nan]})
    out = mean_std(df, ["method"]).set_index("method")
    assert out.loc["a", "auroc_mean"] == 80.0
    assert out.loc["a", "auroc_std"] == pytest.approx(10.0)  # sample std of 70, 80, 90
    assert out.loc["a", "fpr95_std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert out.loc["b", "auroc_std"] == 0.0 and out.loc["b", "seeds"] == 1
    assert list(out.index) == ["a", "b"]


def test_mean_std_table_formats_each_group_once():
    df = pd.DataFrame({"method": ["b", "b", "a", "a"] * 2, "seed": [1, 2] * 4, "ood": ["x"] * 4 + ["y"] * 4,
                       "auroc": [1.0, 2, 3, 4, 5, 6, 7, 8], "fpr95": [1.0] * 8, "id_acc": [0.0, 1, 2, 3] * 2})
    table = mean_std_table(mean_std(df, ["method", "ood"]), ["method"])
    assert list(table.columns) == ["method", "id_acc", "x auroc", "x fpr95", "y auroc", "y fpr95"]
    assert table.method.tolist() == ["b", "a"]  # order of appearance, not alphabetical
    assert table.loc[0, "x auroc"] == "1.5 ± 0.7" and table.loc[1, "y auroc"] == "7.5 ± 0.7"
    assert table.loc[1, "id_acc"] == "2.5 ± 0.7"


def test_ood_rows_use_the_package_metrics():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    logits, labels = rng.normal(size=(200, 3)), rng.integers(0, 3, 200)
    (row,) = ood_rows(s_id, {"x": s_ood}, id_logits=logits, id_labels=labels, method="m", seed=1)
    ref = ood_metrics(s_id, s_ood)
    assert row["method"] == "m" and row["ood"] == "x" and row["seed"] == 1
    assert row["auroc"] == pytest.approx(100 * ref["auroc"]) and row["fpr95"] == pytest.approx(100 * ref["fpr95"])
    assert row["id_acc"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))


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
    from helpers.features import text_features

    text = text_features(smoke_model, NAMES, ["a photo of a {}."])
    ft = finetune_image_tower(smoke_model, ds, text, epochs=0)
    scale = min(float(smoke_model.model.logit_scale.detach().exp()), 100.0)
    assert np.allclose(ft.head_weight, scale * text, atol=1e-6) and not ft.head_bias.any()
    ft_feats = extract_features(ft.loaded, ds, kinds=("image",), batch_size=64, num_workers=0, progress=False)
    assert ft.loaded.model_id != smoke_model.model_id
    assert np.allclose(ft_feats.image, f.image, atol=1e-5)
    assert np.allclose(ft.head_logits(ft_feats.image), scale * f.image @ text.T, atol=1e-4)


def test_finetune_is_deterministic_and_leaves_the_base_model_alone(smoke_model, train_feats, tmp_cache):
    ds, _ = train_feats
    text = F.normalize(torch.randn(10, smoke_model.model.text_projection.shape[1]), dim=-1).numpy()
    before = {k: v.clone() for k, v in smoke_model.model.state_dict().items()}
    kw = dict(epochs=2, batch_size=16, lr=1e-3, augment=True)
    a = finetune_image_tower(smoke_model, ds, text, seed=1, **kw)
    b = finetune_image_tower(smoke_model, ds, text, seed=1, **kw)
    c = finetune_image_tower(smoke_model, ds, text, seed=2, **kw)
    assert all(torch.equal(before[k], v) for k, v in smoke_model.model.state_dict().items())
    assert smoke_model.model.visual is not a.loaded.model.visual
    assert a.loaded.model.transformer is smoke_model.model.transformer  # the text tower is shared, not trained
    assert a.loaded.checkpoint_sha256 == b.loaded.checkpoint_sha256 != c.loaded.checkpoint_sha256
    assert np.array_equal(a.head_weight, b.head_weight)
    drift = weight_change(smoke_model.model.visual, a.loaded.model.visual)
    assert (drift.relative_change > 0).all() and "transformer.resblocks.0" in set(drift.group)
    groups = list(dict.fromkeys(drift.group))
    assert groups[0] == "conv1" and groups[-1] == "proj"  # input-to-output order
    p = "transformer.resblocks.0.mlp.c_fc.weight"
    w0, w1 = dict(smoke_model.model.visual.named_parameters())[p], dict(a.loaded.model.visual.named_parameters())[p]
    rel = float(drift.set_index("parameter").loc[p, "relative_change"])
    assert rel == pytest.approx(float(np.linalg.norm((w1 - w0).detach().numpy()) / np.linalg.norm(w0.detach().numpy())),
                                rel=1e-5)
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


def test_subset_features_keeps_rows_aligned(train_feats):
    ds, f = train_feats
    sub_f, sub_ds = eval_subset(f, ds, 7, seed=0)
    assert len(sub_f) == len(sub_ds) == 7 and sub_f.paths == sub_ds.paths
    with pytest.raises(ValueError, match="do not align"):
        eval_subset(f, ds.subset(range(5)), 3)
    s = subset_features(f, [3, 0, 7])
    assert np.array_equal(s.labels, f.labels[[3, 0, 7]]) and s.paths == [f.paths[i] for i in (3, 0, 7)]
    assert np.array_equal(s.image, f.image[[3, 0, 7]]) and np.array_equal(s.local, f.local[[3, 0, 7]])
    assert s.preproj is None


# ------------------------------------------------------------------------------------------------- notebook
@pytest.mark.notebook
def test_notebook_04_runs_in_the_smoke_profile(require_data, tmp_path):
    from helpers.run import main

    assert main(["--profile", "smoke", "--only", "04", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert manifest["notebooks"]["04_finetune"]["status"] == "ok"
    summary = pd.read_csv(tmp_path / "results" / "04_finetune" / "summary.csv")
    assert {"zero-shot", "linear probe", "PLP", "fine-tune", "CoOp"} <= set(summary.method)
    assert list((tmp_path / "figures" / "04_finetune").glob("*.png"))
