"""Zero-shot detectors (MCM family, GL-MCM, NegLabel), NegLabel's word sources, and notebook 02 in the smoke profile.

Every number is checked against an independent computation: a loop over plain ``math`` calls, a hand-worked
example, or the published rule written out again. The scoring functions are torch; ``_np`` wraps them.
"""

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import detectors
from helpers.detectors import (
    energy_score,
    entropy_score,
    local_mcm_score,
    max_logit_score,
    mcm_score,
    mine_negative_labels,
    msp_score,
    neglabel_score,
)
from helpers.detectors.neglabel import group_indices, negative_quantiles, select_negatives
from helpers.words import (
    Vocabulary,
    WordsUnavailableError,
    debian_words,
    load_words,
    read_word_list,
    subsample,
)


def _np(f, *arrays, **kw):
    """A torch scoring function applied to numpy arrays (float64), returned as numpy."""
    return f(*[torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in arrays], **kw).numpy()


def mcm(cos, T=1.0):
    return _np(mcm_score, cos, T=T)


def local_mcm(local_cos, T=1.0):
    return _np(local_mcm_score, local_cos, T=T)


def glmcm(glob, local, T=1.0, lam=0.5):
    return mcm(glob, T) + lam * local_mcm(local, T)


def neglabel(pos, neg, T=0.01, n_groups=100, seed=0):
    return _np(neglabel_score, pos, neg, T=T, groups=torch.as_tensor(group_indices(neg.shape[1], n_groups, seed)))


def softmax_loop(row, T):
    exps = [math.exp(c / T) for c in row]
    return [e / sum(exps) for e in exps]


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------ MCM family
def test_mcm_matches_a_brute_force_loop():
    cos = np.random.default_rng(0).uniform(-0.2, 0.4, size=(7, 5))
    for T in (1.0, 0.1, 0.01):
        expected = [max(softmax_loop(row, T)) for row in cos]
        np.testing.assert_allclose(mcm(cos, T), expected, rtol=1e-12)
        np.testing.assert_allclose(_np(msp_score, cos / T), expected, rtol=1e-12)  # MSP of the logits = MCM


def test_logit_scores_on_a_hand_worked_example():
    cos = np.array([[0.3, 0.1, -0.2]])  # at T = 0.1 the logits are 3, 1, -2
    z = math.exp(3) + math.exp(1) + math.exp(-2)
    p = [math.exp(3) / z, math.exp(1) / z, math.exp(-2) / z]
    assert _np(max_logit_score, cos, T=0.1)[0] == pytest.approx(3.0)
    assert _np(energy_score, cos, T=0.1)[0] == pytest.approx(0.1 * math.log(z))
    assert _np(entropy_score, cos, T=0.1)[0] == pytest.approx(sum(q * math.log(q) for q in p))
    assert mcm(cos, 0.1)[0] == pytest.approx(p[0])
    # a uniform row has the largest entropy (log 3) and MCM exactly 1/3
    assert _np(entropy_score, np.zeros((1, 3)), T=0.1)[0] == pytest.approx(-math.log(3))
    assert mcm(np.zeros((1, 3)))[0] == pytest.approx(1 / 3)


def test_temperature_changes_the_ranking():
    """T is not cosmetic: two images swap order between MCM's T=1 and CLIP's T=0.01."""
    a, b = [0.30, 0.29, 0.0], [0.20, 0.10, 0.10]  # a: two strong classes; b: one clear winner, lower cosines
    s1, s001 = mcm(np.array([a, b]), 1.0), mcm(np.array([a, b]), 0.01)
    assert s1[0] > s1[1] and s001[0] < s001[1]


def test_published_defaults_and_temperature_in_the_label():
    """Every cosine detector defaults to MCM's T = 1 (its code uses T = 1 for energy, entropy and max-logit too);
    NegLabel to 100·cos; the label always says which T was used."""
    for name in ("mcm", "max_logit", "energy", "entropy", "l_mcm", "gl_mcm"):
        d = detectors.get(name)
        assert d.params["T"] == 1.0 and "T=1" in d.label
    assert detectors.get("energy", T=0.01).label == "energy (T=0.01)"
    assert detectors.get("gl_mcm").params["lam"] == 0.5 and "λ=0.5" in detectors.get("gl_mcm").label
    nl = detectors.get("neglabel")
    assert (nl.params["T"], nl.params["n_groups"], nl.params["seed"]) == (0.01, 100, 0)
    assert (nl.params["percentile"], nl.params["ratio"], nl.params["prompts"]) == (0.95, 0.15, "nice")
    assert (nl.params["noun_template"], nl.params["adj_template"]) == ("the nice {}", "This is a {} photo")
    sig = inspect.signature(mine_negative_labels).parameters
    assert tuple(sig["id_templates"].default) == ("the nice {}",)
    with pytest.raises(ValueError, match="T must be"):
        detectors.get("mcm", T=0)


# ---------------------------------------------------------------------------------------------- GL-MCM
def test_local_mcm_hand_worked():
    local = np.array([[[0.5, 0.0], [0.0, 0.1]]])  # one image, two patches, two classes
    best = max(math.exp(0.5) / (math.exp(0.5) + 1), math.exp(0.1) / (1 + math.exp(0.1)))
    assert local_mcm(local, 1.0)[0] == pytest.approx(best)
    glob = np.array([[0.2, 0.1]])
    assert glmcm(glob, local, 1.0, 0.5)[0] == pytest.approx(max(softmax_loop([0.2, 0.1], 1.0)) + 0.5 * best)
    np.testing.assert_allclose(glmcm(glob, local, 1.0, 0.0), mcm(glob, 1.0))


class _Fixed:
    """A stand-in model for fitting text detectors: text_features comes from a patched function."""


def _fit_on(det, text, monkeypatch):
    import helpers.detectors.mcm as mcm_module

    monkeypatch.setattr(mcm_module, "text_features", lambda model, names, templates, **_: text)
    return det.fit(_Fixed(), [f"c{i}" for i in range(len(text))])


def test_detector_numpy_path_chunks_float16_and_names_missing_kinds(monkeypatch):
    rng = np.random.default_rng(1)
    local = unit(rng.normal(size=(9, 6, 8))).astype(np.float16)
    image = unit(rng.normal(size=(9, 8))).astype(np.float32)
    text = unit(rng.normal(size=(4, 8))).astype(np.float32)
    d = _fit_on(detectors.get("l_mcm", T=0.1), text, monkeypatch)
    full = local_mcm(local.astype(np.float32) @ text.T, 0.1)
    np.testing.assert_allclose(d({"local": local}, chunk=2), full, rtol=1e-6)
    with pytest.raises(ValueError, match="local"):
        d({"image": image})
    with pytest.raises(RuntimeError, match="not fitted"):
        detectors.get("mcm")({"image": image})


def test_model_temperature_is_resolved_at_fit(monkeypatch):
    class Model:
        model = torch.nn.Module()

    Model.model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(9.5)))
    import helpers.detectors.mcm as mcm_module

    text = unit(np.random.default_rng(0).normal(size=(3, 4)))
    monkeypatch.setattr(mcm_module, "text_features", lambda *a, **k: text)
    d = detectors.get("mcm", T="model").fit(Model(), ["a", "b", "c"])
    assert d.T == pytest.approx(1 / 9.5) and json.loads(d.params_json())["T_value"] == pytest.approx(1 / 9.5)
    img = unit(np.random.default_rng(1).normal(size=(5, 4)))
    np.testing.assert_allclose(d({"image": img}), mcm(img @ text.T, d.T), rtol=1e-10)


def _hand_local_and_global(visual, x):
    """Patch embeddings the way GL-MCM's clip/model.py computes them, written out with explicit matrices."""
    w = visual.conv1.out_channels
    p = F.conv2d(x, visual.conv1.weight, stride=visual.conv1.stride).flatten(2).transpose(1, 2)  # (B, P, W)
    h = torch.cat([visual.class_embedding.expand(len(x), 1, w), p], 1) + visual.positional_embedding
    h = F.layer_norm(h, (w,), visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        h = blk(h)  # ordinary blocks: not what is under test
    last = blocks[-1]
    assert isinstance(last.mlp.gelu, torch.nn.GELU) and isinstance(last.ls_1, torch.nn.Identity)
    y = F.layer_norm(h, (w,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
    v = y @ last.attn.in_proj_weight[2 * w:].T + last.attn.in_proj_bias[2 * w:]  # W_v only: no q, k, softmax
    v = h + v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    z = F.layer_norm(v, (w,), last.ln_2.weight, last.ln_2.bias, last.ln_2.eps)
    v = v + F.gelu(z @ last.mlp.c_fc.weight.T + last.mlp.c_fc.bias) @ last.mlp.c_proj.weight.T + last.mlp.c_proj.bias
    v = F.layer_norm(v[:, 1:], (w,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    return F.normalize(v @ visual.proj, dim=-1), F.normalize(visual(x), dim=-1), h


@torch.no_grad()
def test_glmcm_on_a_random_vit_matches_an_explicit_computation(monkeypatch):
    from helpers.features import encode_images
    from helpers.models import load_model

    visual = load_model("pocket-vit-xs", "random", seed=3).model.visual.eval()  # open_clip ViT, 16 patches
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loc, glob, h_before_last = _hand_local_and_global(visual, x)
    text = F.normalize(torch.randn(5, loc.shape[-1], generator=torch.Generator().manual_seed(1)), dim=-1)
    feats = encode_images(visual, x, ("image", "local"))
    torch.testing.assert_close(feats["local"], loc, rtol=1e-4, atol=1e-5)
    # the value path is not the ordinary token output of the last block (what a naive patch feature would be)
    naive = F.normalize(visual.ln_post(visual.transformer.resblocks[-1](h_before_last)[:, 1:]) @ visual.proj, dim=-1)
    assert not torch.allclose(naive, loc, atol=1e-3)
    for T, lam in [(1.0, 0.5), (1.0, 1.0), (0.05, 0.5)]:
        expected = []
        for i in range(len(x)):  # loops over images, patches and classes
            g = max(softmax_loop((glob[i] @ text.T).tolist(), T))
            loc_best = max(max(softmax_loop((loc[i, p] @ text.T).tolist(), T)) for p in range(loc.shape[1]))
            expected.append(g + lam * loc_best)
        d = _fit_on(detectors.get("gl_mcm", T=T, lam=lam), text.numpy(), monkeypatch)
        got = d({"image": feats["image"].numpy(), "local": feats["local"].numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-5)


# -------------------------------------------------------------------------------------------- NegLabel
def test_neglabel_hand_worked_without_groups():
    pos, neg = np.array([[0.3]]), np.array([[0.1, 0.2]])
    expected = math.exp(3) / (math.exp(3) + math.exp(1) + math.exp(2))
    assert neglabel(pos, neg, T=0.1, n_groups=1)[0] == pytest.approx(expected)


def test_neglabel_groups_match_a_loop():
    rng = np.random.default_rng(2)
    pos, neg = rng.uniform(-0.1, 0.4, (5, 4)), rng.uniform(-0.1, 0.4, (5, 23))
    groups = group_indices(23, 5, seed=3)
    assert groups.shape == (5, 4) and sorted(groups.ravel()) == list(range(20))  # last 23 mod 5 = 3 dropped
    expected = []
    for i in range(5):
        per_group = []
        for g in groups:
            num = sum(math.exp(c / 0.01) for c in pos[i])
            per_group.append(num / (num + sum(math.exp(neg[i, j] / 0.01) for j in g)))
        expected.append(sum(per_group) / len(per_group))
    np.testing.assert_allclose(neglabel(pos, neg, 0.01, 5, seed=3), expected, rtol=1e-10)


def test_neglabel_seeds():
    rng = np.random.default_rng(4)
    pos, neg = rng.uniform(0, 0.4, (6, 3)), rng.uniform(0, 0.4, (6, 40))
    np.testing.assert_array_equal(neglabel(pos, neg, n_groups=4, seed=0), neglabel(pos, neg, n_groups=4, seed=0))
    assert not np.allclose(neglabel(pos, neg, n_groups=4, seed=0), neglabel(pos, neg, n_groups=4, seed=1))
    np.testing.assert_array_equal(neglabel(pos, neg, n_groups=1, seed=0), neglabel(pos, neg, n_groups=1, seed=1))


def test_neglabel_a_negative_equal_to_an_id_class_lowers_that_class_only():
    eye = np.eye(8)
    id_text = eye[:3]  # three ID classes
    far = eye[4:]  # negatives orthogonal to every ID class
    rng = np.random.default_rng(5)
    images = unit(np.stack([eye[0], eye[1]]) + 0.05 * rng.normal(size=(2, 8)))  # one image of class 0, one of 1
    before = neglabel(images @ id_text.T, images @ far.T, n_groups=1)
    after = neglabel(images @ id_text.T, images @ np.vstack([far, eye[0]]).T, n_groups=1)
    assert before.min() > 0.99  # far negatives take almost no mass
    assert after[0] < 0.6 and after[0] < before[0] - 0.4  # class 0's image now splits its mass with its twin
    assert after[1] == pytest.approx(before[1], abs=1e-3)  # class 1's image is unaffected


def test_neglabel_rejects_too_few_negatives():
    with pytest.raises(ValueError, match="n_groups"):
        group_indices(7, n_groups=10)


def test_mining_rule_matches_the_quantile_and_percentage_rule():
    rng = np.random.default_rng(6)
    cands, id_text = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(6, 8)))
    q_loop = []
    for c in cands:  # 0.95-quantile with linear interpolation, by hand: position 0.95 * (K - 1) = 4.75
        v = sorted(float(c @ t) for t in id_text)
        q_loop.append(v[4] + 0.75 * (v[5] - v[4]))
    q = negative_quantiles(cands, id_text, 0.95, chunk=7)
    np.testing.assert_allclose(q, q_loop, rtol=1e-5)
    assert list(select_negatives(q, 0.15)) == sorted(range(40), key=lambda j: q_loop[j])[:6]  # floor(40 * 0.15)
    assert len(select_negatives(q[:13], 0.15)) == 1  # floor(13 * 0.15)
    with pytest.raises(ValueError, match="ratio"):
        select_negatives(q, 0.0)


def test_mine_negative_labels_with_the_smoke_clip(smoke_model, tmp_cache):
    from helpers.features import text_features

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    nouns = [f"{w}" for w in ("lamp", "violin", "tundra", "glacier", "umbrella", "pencil", "carpet", "volcano",
                              "mushroom", "teapot", "harbor", "wrench", "lantern", "cactus", "saddle", "anchor",
                              "tulip", "kettle", "ladder", "compass")]
    adjs = ["soft", "bright", "wooden", "striped", "frozen", "velvet", "rusty", "golden", "misty", "tiny"]
    vocab = Vocabulary(tuple(nouns), tuple(adjs), "list", "<test>")
    negs = mine_negative_labels(smoke_model, classes, vocab, progress=False)
    assert not negs.from_cache and len(negs) == 3 + 1  # floor(20 * 0.15) nouns + floor(10 * 0.15) adjectives
    assert list(negs.is_adjective) == [False, False, False, True]
    # independent recomputation: prompted text embeddings, 0.95-quantile by numpy, lowest 15% per part of speech
    id_emb = text_features(smoke_model, classes, ["the nice {}"], use_cache=False)
    for words, template, picked in [(nouns, "the nice {}", negs.words[:3]), (adjs, "This is a {} photo", negs.words[3:])]:
        emb = text_features(smoke_model, words, [template], use_cache=False)
        q = np.quantile(emb @ id_emb.T, 0.95, axis=1)
        assert picked == [words[j] for j in np.argsort(q)[: int(len(words) * 0.15)]]
    np.testing.assert_allclose(negs.embeddings[0], text_features(smoke_model, [negs.words[0]], ["the nice {}"],
                                                                  use_cache=False)[0], rtol=1e-5)
    again = mine_negative_labels(smoke_model, classes, vocab, progress=False)
    assert again.from_cache and again.words == negs.words
    np.testing.assert_array_equal(again.embeddings, negs.embeddings)
    other = mine_negative_labels(smoke_model, classes, vocab, ratio=0.3, progress=False)
    assert not other.from_cache and len(other) == 6 + 3
    # a truncated cache file (killed write, full disk) is reported and mined again, never a BadZipFile
    for f in (tmp_cache / "neglabel").glob("*/*.npy"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged"):
        again = mine_negative_labels(smoke_model, classes, vocab, progress=False)
    assert not again.from_cache and again.words == negs.words


def test_neglabel_detector_equals_its_formula_on_the_mined_labels(smoke_model, tmp_cache):
    """The registered detector (fit = mining with a word list) scores exactly the formula on its negatives."""
    words = ["lamp", "violin", "tundra", "glacier", "umbrella", "pencil", "carpet", "volcano", "mushroom", "teapot",
             "harbor", "wrench", "lantern", "cactus", "saddle", "anchor", "tulip", "kettle", "ladder", "compass"]
    d = detectors.get("neglabel", words="list", word_list=words, n_groups=1, ratio=0.5).fit(
        smoke_model, ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    img = unit(np.random.default_rng(0).normal(size=(6, d.negatives.embeddings.shape[1])))
    pos, neg = img @ d.negatives.id_embeddings.T, img @ d.negatives.embeddings.T
    expected = [math.exp(p.max() / 0.01) * sum(math.exp((q - p.max()) / 0.01) for q in p)
                / (math.exp(p.max() / 0.01) * (sum(math.exp((q - p.max()) / 0.01) for q in p)
                                                + sum(math.exp((q - p.max()) / 0.01) for q in n)))
                for p, n in zip(pos, neg)]
    np.testing.assert_allclose(d({"image": img}), expected, rtol=1e-8)
    assert len(d.negatives) == 10 and json.loads(d.params_json())["negatives"] == 10


# ------------------------------------------------------------------------------------------- words
@pytest.fixture
def fake_wordnet(tmp_path):
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"
    (tmp_path / "index.noun").write_text(header + "blue n 1 1 @ 1 0 01\ndog n 1 1 @ 1 1 02\nhot_dog n 1 0 1 0 03\n")
    (tmp_path / "index.adj").write_text(header + "blue a 1 0 1 0 04\nnice a 1 0 1 0 05\n")
    return tmp_path


def test_debian_wordnet_files_are_parsed(fake_wordnet):
    v = debian_words(fake_wordnet)
    assert v.nouns == ("blue", "dog", "hot dog") and v.adjectives == ("nice",)  # "blue" kept once, as a noun
    assert v.source == "debian" and "3 nouns and 1 adjectives" in v.describe()
    assert debian_words(fake_wordnet / "missing") is None


def test_word_sources_are_tried_in_order(fake_wordnet, tmp_path, monkeypatch):
    import helpers.words as words

    listed = tmp_path / "words.txt"
    listed.write_text("# my words\nlamp\nshiny\tadj\n\n")
    fake_nltk = Vocabulary(("cat",), ("big",), "nltk", "<fake>")
    monkeypatch.setattr(words, "nltk_words", lambda: fake_nltk)
    assert load_words("auto", listed, folder=fake_wordnet) is fake_nltk
    monkeypatch.setattr(words, "nltk_words", lambda: None)
    assert load_words("auto", listed, folder=fake_wordnet).source == "debian"
    v = load_words("auto", listed, folder=tmp_path / "nowhere")
    assert (v.source, v.nouns, v.adjectives) == ("list", ("lamp",), ("shiny",))
    assert load_words("list", listed, folder=fake_wordnet).source == "list"  # forcing a source skips the others
    with pytest.raises(WordsUnavailableError, match="apt-get install -y wordnet-base"):
        load_words("auto", None, folder=tmp_path / "nowhere")
    with pytest.raises(WordsUnavailableError, match="none was given"):
        load_words("list")
    with pytest.raises(ValueError, match="word source"):
        load_words("wiktionary")


def test_word_list_formats(tmp_path):
    assert read_word_list(["Hot_Dog", "dog", "dog"]).nouns == ("dog", "hot dog")
    assert read_word_list({"noun": ["a"], "adj": ["b"]}).adjectives == ("b",)
    bad = tmp_path / "bad.txt"
    bad.write_text("lamp\tverb\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_word_list(bad)
    with pytest.raises(WordsUnavailableError, match="does not exist"):
        read_word_list(tmp_path / "absent.txt")


def test_subsample_is_seeded_and_keeps_order():
    v = Vocabulary(tuple(f"n{i:03d}" for i in range(300)), tuple(f"a{i:03d}" for i in range(50)), "list", "-")
    s = subsample(v, 100)
    assert len(s.nouns) == 100 and s.adjectives == v.adjectives and list(s.nouns) == sorted(s.nouns)
    assert set(s.nouns) <= set(v.nouns) and subsample(v, 100).nouns == s.nouns
    assert subsample(v, 100, seed=1).nouns != s.nouns and subsample(v, None) is v
    assert "subsampled to 100" in s.source


def test_real_wordnet_when_installed():
    v = debian_words()
    if v is None:
        pytest.skip("Debian wordnet-base is not installed (make wordnet installs it where apt is available)")
    assert len(v.nouns) > 100_000 and len(v.adjectives) > 15_000
    assert {"dog", "hot dog", "capitol reef national park", "nice"} <= set(v.nouns)  # Nice, the city
    assert {"wooden", "striped", "happy"} <= set(v.adjectives) and "nice" not in v.adjectives  # kept once


# ------------------------------------------------------------------------------------------ notebook 02
@pytest.mark.notebook
def test_notebook_02_runs_in_the_smoke_profile(smoke_series):
    from helpers.profiles import NOTEBOOKS

    res, fig = smoke_series.results("02_zero_shot"), smoke_series.figures("02_zero_shot")
    scores = pd.read_csv(res / "scores.csv")
    main_rows = scores[scores["step"] == "main"]
    assert set(main_rows["ood_set"]) == {"dtd10", "mnist", "fashion-mnist", "tiny-imagenet-near"}
    expected = {"MCM (T=1)", "MCM (T=0.01)", "max-logit (T=0.01)", "energy (T=1)", "energy (T=0.01)", "entropy (T=1)",
                "entropy (T=0.01)", "L-MCM (T=1)", "GL-MCM (T=1, λ=0.5)", "GL-MCM (T=1, λ=1)", "NegLabel (T=0.01)"}
    assert set(main_rows["detector_label"]) == expected and len(main_rows) == len(expected) * 4
    assert set(scores["fpr_positive"]) == {"id", "ood"} and set(main_rows["fpr_positive"]) == {"id"}
    assert main_rows[["auroc", "fpr95", "aupr_in", "aupr_out"]].apply(lambda c: c.between(0, 100)).all().all()
    assert (main_rows["auroc_lo"] <= main_rows["auroc"] + 1e-9).all()
    assert (main_rows["auroc"] <= main_rows["auroc_hi"] + 1e-9).all()
    sens = pd.read_csv(res / "protocol_sensitivity.csv")
    assert sens["factor"].iloc[0].startswith("baseline") and {"temperature", "interpolation", "FPR95 positive class",
                                                              "energy: temperature"} <= set(sens["factor"])
    assert any(f.startswith("prompt set: ") for f in sens["factor"])
    protocol_rows = scores[scores["step"] == "protocol"]  # one step; each variant named in its own column
    assert set(protocol_rows["variant"]) == set(sens["factor"])
    fpr_row = sens[sens["factor"] == "FPR95 positive class"].iloc[0]
    assert fpr_row["avg AUROC"] == pytest.approx(sens["avg AUROC"].iloc[0])  # AUROC does not depend on it
    energy_t = sens[sens["factor"] == "energy: temperature"].iloc[0]  # measured against energy's own T = 1 row
    energy_1 = sens[sens["factor"] == "energy as in MCM's code"].iloc[0]
    assert energy_t["Δ avg AUROC"] == pytest.approx(energy_t["avg AUROC"] - energy_1["avg AUROC"], abs=0.02)
    headline = pd.read_csv(res / "headline.csv")
    assert list(headline["detector_label"]) == ["MCM (T=1)", "GL-MCM (T=1, λ=0.5)", "GL-MCM (T=1, λ=1)",
                                                "NegLabel (T=0.01)"]
    mining = pd.read_csv(res / "neglabel_mining.csv")
    cap = NOTEBOOKS["smoke"]["02"]["neglabel_max_words"]
    assert (mining["candidates"] <= cap).all() and (mining["selected"] == (mining["candidates"] * 0.15).astype(int)).all()
    assert {"score_histograms.png", "roc_curves.png", "mcm_vs_temperature.png", "protocol_sensitivity.png",
            "neglabel_mining.png"} <= {p.name for p in fig.glob("*.png")}
    manifest = json.loads((smoke_series.out / "results" / "manifest.json").read_text())
    extra = manifest["notebooks"]["02_zero_shot"]["provenance"]["extra"]
    assert extra["02_word_source"] and extra["02_negative_labels"] > 0


def test_neglabel_fixed_list_is_mined_once_and_reencoded(smoke_model):
    """mining="fixed" (CMA's official choice): the words are those the named model mines, in its order, and their
    embeddings are the scored model's own encodings of them (an independent text_features call); "own" re-mines."""
    from helpers.features import text_features
    from helpers.models import derive

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    words = ["lamp", "violin", "tundra", "glacier", "umbrella", "pencil", "carpet", "volcano", "mushroom", "teapot",
             "harbor", "wrench", "lantern", "cactus", "saddle", "anchor", "tulip", "kettle", "ladder", "compass"]
    g = torch.Generator().manual_seed(0)
    moved = {k: v.detach() + 0.2 * v.detach().std() * torch.randn(v.shape, generator=g)
             for k, v in smoke_model.model.named_parameters() if k.startswith("transformer.resblocks.0.")}
    tuned = derive(smoke_model, "moved", weights=moved)  # a "fine-tuned" text tower
    spec = dict(words="list", word_list=words, n_groups=1, ratio=0.5)
    zero = detectors.get("neglabel", **spec).fit(smoke_model, classes)
    fixed = detectors.get("neglabel", mining="fixed", mined_by=smoke_model.name, **spec).fit(tuned, classes)
    own = detectors.get("neglabel", **spec).fit(tuned, classes)
    assert fixed.negatives.words == zero.negatives.words and fixed.resolved["miner"] == smoke_model.model_id
    assert own.resolved["miner"] == tuned.model_id
    np.testing.assert_allclose(fixed.negatives.embeddings[0],
                               text_features(tuned, [fixed.negatives.words[0]], ["the nice {}"], use_cache=False)[0],
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(fixed.negatives.embeddings, zero.negatives.embeddings, atol=1e-3)  # re-encoded
    np.testing.assert_allclose(fixed.negatives.id_embeddings,
                               text_features(tuned, classes, ["the nice {}"], use_cache=False), rtol=1e-4, atol=1e-6)
    assert "mining=fixed" in fixed.label and "mining" not in own.label
    with pytest.raises(ValueError, match="mined_by"):
        detectors.get("neglabel", mining="fixed", **spec).fit(tuned, classes)
    with pytest.raises(ValueError, match="mining must be"):
        detectors.get("neglabel", mining="zero-shot")
