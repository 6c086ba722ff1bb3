"""Linear probes and PLP: determinism, train-only standardisation, pseudo-labels, the schedule, the probe
detectors and their cache, the model families and the familiar-OOD split and verdict, and notebook 03 in the
smoke profile."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from helpers.probes import LinearProbe, lr_schedule, pseudo_labels, standardization, train_linear_probe


def _blobs(n=400, d=8, c=4, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(scale=2.5, size=(c, d))[y] + rng.normal(size=(n, d))
    return (x * scale + shift).astype(np.float32), y


FAST = dict(epochs=5, batch_size=64)


# ----------------------------------------------------------------------------------------- training
def test_probe_training_is_deterministic_with_the_seed():
    x, y = _blobs()
    a = train_linear_probe(x, y, seed=42, **FAST)
    b = train_linear_probe(x, y, seed=42, **FAST)
    c = train_linear_probe(x, y, seed=7, **FAST)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.allclose(a.weight, c.weight)


def test_probe_does_not_touch_the_global_rng():
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_linear_probe(*_blobs(), **FAST)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_standardisation_uses_train_statistics_only():
    x, y = _blobs(scale=np.linspace(0.5, 20, 8), shift=np.arange(8) * 3.0)
    probe = train_linear_probe(x, y, **FAST)
    np.testing.assert_allclose(probe.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(probe.std, x.std(0, ddof=1), rtol=1e-5)  # unbiased, like torch.std in PLP
    test = np.random.default_rng(5).normal(loc=100.0, scale=50.0, size=(30, 8)).astype(np.float32)
    expected = ((test - x.mean(0)) / x.std(0, ddof=1)) @ probe.weight.T + probe.bias
    np.testing.assert_allclose(probe.logits(test), expected, rtol=1e-4, atol=1e-4)
    # the test set's own statistics play no role: the probe is the same whatever is scored later
    np.testing.assert_array_equal(probe.logits(test[:5]), probe.logits(test)[:5])


def test_standardised_probe_ignores_per_dimension_affine_maps():
    """With train statistics, training on a·x + b gives the probe trained on x (what standardising is for)."""
    x, y = _blobs(seed=3)
    scale, shift = np.linspace(0.1, 30, 8).astype(np.float32), np.arange(8, dtype=np.float32)
    a = train_linear_probe(x, y, **FAST)
    b = train_linear_probe(x * scale + shift, y, **FAST)
    np.testing.assert_allclose(a.weight, b.weight, atol=1e-4)
    unstd = train_linear_probe(x * scale + shift, y, standardize=False, **FAST)
    np.testing.assert_array_equal(unstd.mean, 0.0)
    np.testing.assert_array_equal(unstd.std, 1.0)
    assert not np.allclose(a.weight, unstd.weight, atol=1e-2)


def test_constant_dimension_does_not_divide_by_zero():
    x, y = _blobs()
    x[:, 3] = 7.0
    mean, std = standardization(x)
    assert std[3] == 1.0 and mean[3] == 7.0
    assert np.isfinite(train_linear_probe(x, y, **FAST).logits(x)).all()


def test_probe_agrees_with_logistic_regression():
    """Independent check of what is learnt: scikit-learn's multinomial logistic regression on the same data."""
    data, labels = _blobs(n=1200, seed=11)
    x, y, test, y_test = data[:600], labels[:600], data[600:], labels[600:]
    probe = train_linear_probe(x, y, epochs=30, batch_size=64)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    sk = LogisticRegression(C=10.0, max_iter=2000).fit(xs, y)
    assert (probe.predict(test) == y_test).mean() > 0.95
    assert (probe.predict(test) == sk.predict((test - x.mean(0)) / x.std(0, ddof=1))).mean() > 0.97


def test_lr_schedule_is_plps():
    s = lr_schedule(100, 1e-3, 0.1)
    assert len(s) == 100
    np.testing.assert_allclose(s[:10], np.linspace(0, 1e-3, 10))  # linear warm-up from 0 over 10% of the steps
    assert s[10] == pytest.approx(1e-3)  # cosine starts at the peak ...
    np.testing.assert_allclose(s[10:], 0.5e-3 * (1 + np.cos(np.pi * np.arange(90) / 90)))  # ... and decays
    assert s[-1] < 1e-6 and (np.diff(s[10:]) <= 0).all()


def test_probe_bad_input_names_the_problem():
    x, y = _blobs()
    with pytest.raises(ValueError, match="num_classes"):
        train_linear_probe(x, y, num_classes=2)
    with pytest.raises(ValueError, match="labels must be"):
        train_linear_probe(x, y.astype(float))
    with pytest.raises(ValueError, match="NaN"):
        train_linear_probe(np.full_like(x, np.nan), y)
    probe = LinearProbe(np.zeros((3, 8), np.float32), np.zeros(3, np.float32), np.zeros(8, np.float32),
                        np.ones(8, np.float32))
    with pytest.raises(ValueError, match="feature kind"):
        probe.logits(np.zeros((2, 5)))


# ------------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_hand_worked():
    text = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])  # un-normalised on purpose
    img = np.array([[0.9, 0.1], [0.2, 0.3], [-5.0, -4.0], [3.0, 3.1]])
    # cosines to the normalised texts: row 1 (.55, .83, -.98) -> 1; row 2 (-.78, -.62, .99) -> 2;
    # row 3 (.696, .719, -.99) -> 1: normalising the text matters, the image norm does not
    np.testing.assert_array_equal(pseudo_labels(img, text), [0, 1, 2, 1])
    with pytest.raises(ValueError, match="share D"):
        pseudo_labels(np.ones((2, 3)), np.ones((4, 5)))


def test_pseudo_labels_are_argmax_of_the_ensemble_cosines(smoke_model, tmp_cache):
    from helpers.data import get_dataset
    from helpers.features import extract_features, text_features
    from helpers.prompts import get_prompts

    ds = get_dataset("cifar10-probe", max_per_class=3)
    feats = extract_features(smoke_model, ds, kinds=("image", "preproj"), num_workers=0, progress=False)
    # the ensemble built by hand: encode each prompt, normalise, average, normalise (PLP's clip_label_embeddings)
    import torch

    with torch.no_grad():
        per_prompt = [smoke_model.model.encode_text(smoke_model.tokenizer([t.format(c) for c in ds.class_names]))
                      for t in get_prompts("plp5")]
    ens = torch.stack([torch.nn.functional.normalize(e, dim=-1) for e in per_prompt]).mean(0)
    ens = torch.nn.functional.normalize(ens, dim=-1).numpy()
    np.testing.assert_allclose(text_features(smoke_model, ds.class_names, get_prompts("plp5")), ens, atol=1e-5)
    cos = feats.image @ ens.T
    np.testing.assert_array_equal(pseudo_labels(feats.image, ens), cos.argmax(1))


# -------------------------------------------------------------------------------------- the line-up
def test_evaluated_detectors_match_the_building_blocks(smoke_model, tmp_cache):
    """Notebook 03's line-up through evaluate(): every score equals the building blocks computed by hand, and a
    second fit reads the trained probes from the cache."""
    from helpers.benchmark import load_benchmark
    from helpers.detectors import fit_mahalanobis
    from helpers.evaluation import evaluate
    from helpers.features import text_features
    from helpers.prompts import get_prompts

    bench = load_benchmark(smoke_model, "cifar10-test", ["mnist"], train_dataset="cifar10-probe", max_per_class=4,
                           ood_max_per_class=4, train_max_per_class=8, workers=0, progress=False)
    train, test = bench.train, bench.id
    probe = dict(epochs=3, batch_size=32)
    specs = [{"name": "mcm"}, {"name": "plp", **probe}, {"name": "linear_probe", "score": "energy", **probe},
             {"name": "knn", "feature": "image", "standardize": False}, {"name": "relative_mahalanobis"}]
    ev = evaluate(specs, bench, n_boot=10)
    s = {k: v["cifar10-test"] for k, v in ev.scores.items()}
    text5 = text_features(smoke_model, train.class_names, get_prompts("plp5"))
    y_pseudo = (train.image @ text5.T).argmax(1)
    plp_det = ev.detectors["PLP · MSP (epochs=3, batch_size=32)"]
    np.testing.assert_array_equal(plp_det.train_labels, y_pseudo)
    assert plp_det.info["label_accuracy"] == pytest.approx(100 * (y_pseudo == train.labels).mean())
    plp = train_linear_probe(train.preproj, y_pseudo, num_classes=10, epochs=3, batch_size=32)
    z = plp.logits(test.preproj).astype(np.float64)
    np.testing.assert_allclose(s["PLP · MSP (epochs=3, batch_size=32)"], np.exp(z).max(1) / np.exp(z).sum(1),
                               rtol=1e-5)
    lp = train_linear_probe(train.preproj, train.labels, num_classes=10, epochs=3, batch_size=32)
    z = lp.logits(test.preproj).astype(np.float64)
    np.testing.assert_allclose(s["linear probe · energy (epochs=3, batch_size=32)"], np.log(np.exp(z).sum(1)),
                               rtol=1e-5)
    single = text_features(smoke_model, train.class_names, get_prompts("single")).astype(np.float64)
    cos = test.image.astype(np.float64) @ single.T
    np.testing.assert_allclose(s["MCM (T=1)"], np.exp(cos).max(1) / np.exp(cos).sum(1), rtol=1e-9)
    bank = train.image / np.linalg.norm(train.image, axis=1, keepdims=True)
    np.testing.assert_allclose(s["kNN (k=1, feature=image, standardize=False)"],
                               (test.image / np.linalg.norm(test.image, axis=1, keepdims=True) @ bank.T).max(1),
                               rtol=1e-6)
    fit = fit_mahalanobis(train.preproj, train.labels)
    f = test.preproj.astype(np.float64)
    d = np.stack([(((f - m) @ fit.whiten) ** 2).sum(1) for m in fit.means], 1)
    d0 = (((f - fit.background_mean) @ fit.background_whiten) ** 2).sum(1)
    np.testing.assert_allclose(s["relative Mahalanobis"], -(d - d0[:, None]).min(1), rtol=1e-7)
    # the table: one row per detector and OOD set, ID accuracy of the classifiers only
    assert len(ev.table) == len(specs) and set(ev.table["ood_set"]) == {"mnist"}
    acc = ev.table.set_index("detector_label")["id_acc"]
    assert acc["PLP · MSP (epochs=3, batch_size=32)"] == pytest.approx(100 * (plp.predict(test.preproj) ==
                                                                              test.labels).mean())
    assert np.isnan(acc["kNN (k=1, feature=image, standardize=False)"])
    # trained probes are cached: a second fit reads them, a new hyper-parameter trains a new one
    again = evaluate(specs[1:2], bench, n_boot=0).detectors
    assert next(iter(again.values())).info["from_cache"] and not plp_det.info["from_cache"]
    other = evaluate([{"name": "plp", "epochs": 4, "batch_size": 32}], bench, n_boot=0).detectors
    assert not next(iter(other.values())).info["from_cache"]


# ----------------------------------------------------------------------------- families, familiar OOD
def test_fit_line_matches_numpy():
    from helpers.families import fit_line

    x = np.array([20.0, 35.0, 41.0, 55.0, 60.0])
    y = np.array([70.0, 74.0, 77.0, 80.0, 83.0])
    res = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert res["slope"] == pytest.approx(slope) and res["intercept"] == pytest.approx(intercept)
    assert res["r2"] == pytest.approx(r2)
    with pytest.raises(ValueError, match="at least 3"):
        fit_line([1, 2], [3, 4])


def test_families_are_defined():
    import open_clip

    from helpers.families import OPEN_CLIP_FAMILY, get_family
    from helpers.models.pocket import CONFIGS

    known = set(open_clip.list_pretrained())
    assert all(tuple(s.split("/", 1)) in known for s in OPEN_CLIP_FAMILY)
    for name in ("pockets", "pockets-100"):
        members = get_family(name)
        assert len(members) >= 5, name
        assert all(m.pocket is not None and m.pocket == CONFIGS[m.pocket.name] for m in members)
    assert len(get_family("open_clip")) == len(OPEN_CLIP_FAMILY)
    mixed = get_family(["ViT-B-16/openai", "pocket:tiny-100-snapshots"])
    assert [m.name for m in mixed] == ["ViT-B-16/openai", "pocket:tiny-100-snapshots @25%",
                                       "pocket:tiny-100-snapshots @50%", "pocket:tiny-100-snapshots @75%",
                                       "pocket:tiny-100-snapshots"]
    assert [m.snapshot for m in mixed[1:]] == [0.25, 0.5, 0.75, None]
    with pytest.raises(KeyError, match="unknown model family"):
        get_family("nope")


def test_snapshot_members_load_their_own_checkpoints(require_data):
    import torch

    from helpers.families import FamilyMember, pocket_members
    from helpers.models.pocket import CONFIGS

    members = pocket_members("tiny-100-snapshots")
    early, final = members[0].load(), members[-1].load()
    assert early.model_id != final.model_id and early.info["snapshot"] == 0.25
    assert early.info["zero_shot_accuracy"] is None and final.info["zero_shot_accuracy"] is not None
    assert not torch.equal(early.model.visual.proj, final.model.visual.proj)
    with pytest.raises(KeyError, match="saved no snapshot at 0.30"):
        FamilyMember("x", pocket=CONFIGS["tiny-100-snapshots"], snapshot=0.3).load()


def test_familiar_split_keeps_pretraining_images_out_of_the_test_sets(require_data, tmp_cache):
    from helpers.data import TINY_IMAGENET_CIFAR10_OVERLAP
    from helpers.data.arrays import decoded_images
    from helpers.families import familiar_config, familiar_split
    from helpers.models.pocket import PocketConfig, pretraining_arrays

    split = familiar_split(6, pretrain_per_class=40, seed=3)
    assert not set(split.seen) & set(split.unseen)
    overlap = {w for ws in TINY_IMAGENET_CIFAR10_OVERLAP.values() for w in ws}
    assert not (set(split.seen) | set(split.unseen)) & overlap  # near-OOD classes only
    assert familiar_split(6, pretrain_per_class=40, seed=3) == split  # seeded
    tests = split.test_sets()
    used = split.pretrain_images()
    assert len(used) == 6 * 40 and set(used.classes[y] for y in used.labels) == set(split.seen)
    assert not set(used.paths) & set(tests["seen"].paths)  # held out: never seen in pretraining
    assert {tests["seen"].classes[y] for y in tests["seen"].labels} == set(split.seen)
    assert {tests["unseen"].classes[y] for y in tests["unseen"].labels} == set(split.unseen)
    assert np.bincount(tests["seen"].labels).max() == np.bincount(tests["unseen"].labels).max() == 10
    # the pocket trainer picks exactly these images (its own selection code, compared pixel for pixel)
    only_tiny = PocketConfig("t", arch="pocket-vit-xs", pretrain=(split.pretrain_source(),))
    x, y, names, _ = pretraining_arrays(only_tiny, 32)
    np.testing.assert_array_equal(x, decoded_images(used, 32, progress=False))
    assert {names[i] for i in y} == {used.class_names[c] for c in set(used.labels)}  # captions name seen classes
    cfg = familiar_config("tiny-100-snapshots", split)
    assert cfg.pretrain[-1] == split.pretrain_source()
    assert cfg.name == "tiny-100-snapshots-familiar-tiny-imagenet-near"
    with pytest.raises(ValueError, match="pretrain_per_class"):
        familiar_split(6, pretrain_per_class=50)


def _familiar_rows(aurocs: dict):
    import pandas as pd

    rows = [{"step": "familiar: x", "method": m, "detector_label": d, "ood_set": "x", "variant": part, "auroc": v}
            for (m, d, part), v in aurocs.items()]
    return pd.DataFrame(rows)


def test_familiar_gaps_and_verdict_hand_worked():
    from helpers.families import familiar_gaps, familiar_verdict

    au = {("control", "MCM", "seen"): 80, ("control", "MCM", "unseen"): 78,
          ("familiar", "MCM", "seen"): 70, ("familiar", "MCM", "unseen"): 77,
          ("control", "kNN", "seen"): 60, ("control", "kNN", "unseen"): 61,
          ("familiar", "kNN", "seen"): 66, ("familiar", "kNN", "unseen"): 60}
    gaps = familiar_gaps(_familiar_rows(au)).set_index("detector_label")
    assert gaps.loc["MCM", "familiar − control on seen"] == -10 and gaps.loc["MCM", "familiar − control on unseen"] == -1
    assert gaps.loc["MCM", "control: unseen − seen"] == -2 and gaps.loc["MCM", "familiar: unseen − seen"] == 7
    assert gaps.loc["MCM", "gap change"] == 9 and gaps.loc["kNN", "gap change"] == -7
    v = familiar_verdict(gaps.reset_index(), ["MCM"], ["kNN"]).iloc[0]
    assert v["boundary-based: familiar − control (seen)"] == -10 and v["feature-space: familiar − control (seen)"] == 6
    assert v["direction the claim predicts"] and v["difference above noise"]
    assert v["effect"] == "class-specific"  # seen changed by 10 and 6, unseen by 1 and 1
    # the same change on seen and unseen classes: a domain-wide effect, and a gap below 3 points is noise
    control = {k: a for k, a in au.items() if k[0] == "control"}
    au2 = {**control, **{("familiar", d, part): a - (5 if d == "MCM" else 4) for (_, d, part), a in control.items()}}
    v2 = familiar_verdict(familiar_gaps(_familiar_rows(au2)), ["MCM"], ["kNN"]).iloc[0]
    assert v2["direction the claim predicts"] and not v2["difference above noise"]
    assert v2["effect"].startswith("domain-wide")


# ---------------------------------------------------------------------------------------- notebook 03
@pytest.mark.notebook
def test_notebook_03_runs_in_the_smoke_profile(smoke_series):
    manifest = json.loads((smoke_series.out / "results" / "manifest.json").read_text())
    results = smoke_series.results("03_probes")
    assert manifest["notebooks"]["03_probes"]["status"] == "ok"
    for table in ("scores", "id_accuracy", "ood_methods_auroc", "plp_vs_mcm", "familiar_ood_gaps",
                  "familiar_ood_verdict", "family_correlation", "family_fit"):
        assert (results / f"{table}.csv").is_file(), table
    import pandas as pd

    scores = pd.read_csv(results / "scores.csv")
    assert {"main", "family", "familiar: tiny-imagenet-near", "familiar: fashion-mnist"} == set(scores["step"])
    assert set(scores["fpr_method"]) == {"nearest"}
    familiar = scores[scores["step"].str.startswith("familiar: ")]  # the test set's classes: a factor column
    assert set(familiar["variant"]) == {"seen", "unseen"}
    assert set(familiar["ood_set"]) == {"tiny-imagenet-near", "fashion-mnist"}
    fam = scores[scores["step"] == "family"]
    assert fam["model"].nunique() == 5  # pockets-100: tiny-100, and tiny-100-snapshots at 25/50/75/100%
    fits = pd.read_csv(results / "family_fit.csv")
    assert len(fits) == 3 and fits["r2"].between(0, 1).all()
    assert list(smoke_series.figures("03_probes").glob("*.png"))
