"""Notebook 07's attack: the loss, the smoothness penalty, the constraints and that it works."""

import numpy as np
import pytest
import torch

from helpers import adversarial
from helpers.adversarial import attack_loss, feature_attack, tv2
from helpers.data import get_dataset


def test_tv2_matches_a_hand_computed_example():
    delta = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])  # (1, 1, 2, 3)
    # vertical differences 2, 1, -1 -> 6; horizontal 1, 2 and 0, 0 -> 5; zero-padded means divide by 6 pixels
    assert tv2(delta).item() == pytest.approx(11 / 6)


def test_attack_loss_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    adv, tgt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    delta = torch.randn(4, 3, 6, 6, generator=g)
    a, t = adv.numpy(), tgt.numpy()
    cos = (a * t).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(t, axis=1)
    d = delta.numpy()
    tv = (np.square(np.diff(d, axis=2)).sum() + np.square(np.diff(d, axis=3)).sum()) / d.size
    assert attack_loss(adv, tgt, delta, 7.0).item() == pytest.approx(-cos.mean() + 7.0 * tv, rel=1e-5)


@pytest.fixture(scope="module")
def pair_images(smoke_model):
    sources, targets, _ = adversarial.pairs(get_dataset("dtd10"), get_dataset("cifar10-probe"), 8, seed=0)
    return adversarial.decoded(smoke_model, sources), adversarial.decoded(smoke_model, targets), sources, targets


def test_patchy_attack_pulls_the_feature_to_its_target_and_keeps_the_rules(smoke_model, pair_images):
    x, t, _, _ = pair_images
    before = {k: v.clone() for k, v in smoke_model.model.state_dict().items()}
    a = feature_attack(smoke_model, x, t, lam=0.0, steps=30, lr=1e-2, batch_size=4, snapshots=(10,))
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert all(torch.equal(v, smoke_model.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in smoke_model.model.parameters())
    assert all(p.requires_grad for p in smoke_model.model.visual.parameters())  # flags restored
    cos = a.history["cos to target"]
    # the smoke CLIP's features start close already (0.92); the attack removes most of the remaining distance
    assert len(cos) == 31 and 1 - cos.iloc[-1] < 0.25 * (1 - cos.iloc[0]), cos.tolist()
    # the history equals an independent measurement of the final images, in the attack's (default) feature space
    assert a.settings["feature"] == "preproj"
    f = adversarial.embed(smoke_model, a.images, "preproj").detach()
    ft = adversarial.embed(smoke_model, t, "preproj").detach()
    assert cos.iloc[-1] == pytest.approx(torch.nn.functional.cosine_similarity(f, ft).mean().item(), abs=1e-5)
    assert list(a.snapshots) == [10] and not torch.equal(a.snapshots[10], a.images)


def test_eps_bound_holds(smoke_model, pair_images):
    x, t, _, _ = pair_images
    eps = 2 / 255
    a = feature_attack(smoke_model, x, t, lam=0.0, steps=5, lr=1e-2, batch_size=8, eps=eps)
    assert (a.images - x).abs().max().item() <= eps + 1e-6


def test_cached_attack_is_reused(smoke_model, pair_images, tmp_cache):
    _, _, sources, targets = pair_images
    first = adversarial.cached_attack(smoke_model, sources, targets, lam=5e3, steps=3, batch_size=8)
    again = adversarial.cached_attack(smoke_model, sources, targets, lam=5e3, steps=3, batch_size=8)
    assert torch.equal(first.images, again.images)
    assert first.history.equals(again.history)


def test_cached_attack_is_keyed_by_the_feature_space(smoke_model, pair_images, tmp_cache, monkeypatch):
    _, _, sources, targets = pair_images
    args = dict(lam=0.0, steps=3, lr=1e-2, batch_size=8)
    default = adversarial.cached_attack(smoke_model, sources, targets, **args)
    image = adversarial.cached_attack(smoke_model, sources, targets, feature="image", **args)
    assert (default.settings["feature"], image.settings["feature"]) == ("preproj", "image")
    assert not torch.equal(default.images, image.images), "the image-space attack was read from the preproj entry"
    assert len(list((tmp_cache / "adversarial").iterdir())) == 2

    from helpers import cache

    hits, lookup = [], cache.cached_tensors

    def recording(*a, **k):
        out = lookup(*a, **k)
        hits.append(out[2])
        return out

    monkeypatch.setattr(cache, "cached_tensors", recording)
    explicit = adversarial.cached_attack(smoke_model, sources, targets, feature="preproj", **args)
    assert hits == [True], "the explicit feature space missed the default's entry"
    assert torch.equal(explicit.images, default.images)
    assert len(list((tmp_cache / "adversarial").iterdir())) == 2


def test_embed_preproj_is_the_visual_output_without_its_projection(smoke_model):
    """PLP's feature space: open_clip's ``model.visual`` with ``proj = None`` (``build_openclip_visual``)."""
    import torchvision.transforms as T

    visual = smoke_model.model.visual
    norm = next(t for t in smoke_model.preprocess.transforms if isinstance(t, T.Normalize))
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = adversarial.embed(smoke_model, x, "preproj")
        image = adversarial.embed(smoke_model, x, "image")
        proj = visual.proj
        try:
            visual.proj = None
            want = visual(norm(x))
        finally:
            visual.proj = proj
        projected = visual(norm(x))
    assert got.shape == want.shape and got.shape[1] == proj.shape[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image, torch.nn.functional.normalize(projected, dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(torch.nn.functional.normalize(got, dim=-1), image, atol=1e-3)


def test_feature_attack_defaults_to_plps_feature_space():
    import inspect

    assert inspect.signature(feature_attack).parameters["feature"].default == "preproj"


def test_score_attack_raises_the_detectors_score(smoke_model, pair_images):
    from helpers.data import get_dataset as ds
    from helpers.detectors import get

    x, _, _, _ = pair_images
    mcm = get({"name": "mcm", "T": 1.0}).fit(smoke_model, ds("cifar10-test").class_names)
    adv = adversarial.score_attack(smoke_model, mcm, x, steps=20, lr=1e-2, batch_size=8)

    def score(images):
        return mcm.score(image=adversarial.embed(smoke_model, images).detach().double()).mean().item()

    assert score(adv) > score(x)


@pytest.mark.notebook
def test_notebook_07_runs_in_the_smoke_profile(smoke_series):
    import pandas as pd

    res = smoke_series.results("07_adversarial")
    scores = pd.read_csv(res / "scores.csv")
    assert set(scores.step) == {"memory bank with the targets", "memory bank without the targets", "steps", "eps"}
    main_rows = scores[scores.step == "memory bank with the targets"]
    assert {"dtd10", "mnist"} <= set(main_rows.ood_set)  # the attacked sets are keyed by factor columns
    assert {"none", "smooth", "patchy"} == set(main_rows[main_rows.ood_set == "dtd10"].attack.dropna())
    assert set(scores[scores.step == "eps"].eps_255) == {8.0} and scores[scores.step == "steps"].attack.notna().all()
    assert {"dtd10 (real)", "dtd10 (smooth)", "dtd10 (patchy)", "mnist"} <= set(pd.read_csv(res / "auroc.csv").columns)
    drops = pd.read_csv(res / "auroc_drop.csv")
    assert len(drops) == 6
    # every kNN row names its feature space; the published 1-NN cosine detector (raw pre-projection) comes first
    assert list(drops.detector_label[:3]) == ["kNN (k=1, feature=preproj, standardize=False)",
                                              "kNN (k=1, feature=image, standardize=False)", "kNN (k=1, feature=preproj)"]
    assert {"examples.png", "attack_progress.png", "auroc_vs_eps.png"} <= {
        p.name for p in smoke_series.figures("07_adversarial").glob("*.png")}


def test_attack_grid_with_fewer_pairs_than_columns():
    import matplotlib.pyplot as plt

    from helpers import plots

    imgs = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    fig = plots.attack_grid({"source": imgs, "δ smooth": imgs - 0.5, "target": imgs}, n=6)
    assert len(fig.axes) == 3 * 4, "one column per pair when there are fewer pairs than columns"
    plt.close(fig)


# ------------------------------------------------------------------------------------------- pairs and the bank
def _folder(name, n):
    from helpers.data import ImageFolderDataset

    return ImageFolderDataset(name, "/nonexistent", ["a"], ["a"], [(f"a/{name}{i:05d}.png", 0) for i in range(n)])


@pytest.mark.parametrize("id_size", [None, 10_000])
def test_official_pairs_are_the_official_notebooks_draw(id_size):
    """The official cell, run on numpy's global generator: ``fix_random_seeds(0)``, then
    ``np.random.choice(len(cifar100_train), N)`` (targets), ``np.random.choice(len(cifar100_test), N)`` (ID test),
    ``np.random.choice(len(cifar10), N)`` (sources)."""
    sources, bank, n = _folder("src", 300), _folder("bank", 500), 400  # more pairs than sources: with replacement
    state = np.random.get_state()
    try:
        np.random.seed(0)
        train_idx = np.random.choice(len(bank), n)
        if id_size is not None:
            np.random.choice(id_size, n)
        src_idx = np.random.choice(len(sources), n)
    finally:
        np.random.set_state(state)
    src, tgt, rows = adversarial.pairs(sources, bank, n, seed=0, id_size=id_size)
    np.testing.assert_array_equal(rows, train_idx)
    assert tgt.paths == [bank.paths[i] for i in train_idx]
    assert src.paths == [sources.paths[i] for i in src_idx]
    assert len(set(src.paths)) < n and len(set(tgt.paths)) < n  # drawn with replacement, in draw order


def test_distinct_pairs_are_the_previous_draw():
    sources, bank = _folder("src", 50), _folder("bank", 80)
    rng = np.random.default_rng(3)
    src_idx = np.sort(rng.choice(50, 20, replace=False))
    tgt_idx = rng.choice(80, 20, replace=False)
    src, tgt, rows = adversarial.pairs(sources, bank, 20, seed=3, draw="distinct")
    np.testing.assert_array_equal(rows, tgt_idx)
    assert src.paths == [sources.paths[i] for i in src_idx] and len(set(tgt.paths)) == 20
    with pytest.raises(ValueError, match="pair_draw='official'"):
        adversarial.pairs(sources, bank, 51, draw="distinct")
    with pytest.raises(ValueError, match="draw must be"):
        adversarial.pairs(sources, bank, 5, draw="random")


def test_bank_without_matches_brute_force():
    from helpers.features import Features

    rng = np.random.default_rng(0)
    bank = _folder("bank", 1000)
    rows = rng.choice(1000, 300)  # with replacement: repeated targets
    targets = bank.subset(rows)
    feats = Features("bank", "m", np.zeros(1000, int), bank.paths, ["a"], ["a"],
                     image=rng.normal(size=(1000, 4)).astype(np.float32))
    got = adversarial.bank_without(feats, targets)
    brute = [i for i in range(len(feats)) if i not in set(rows.tolist())]  # the notebook's former expression
    assert got.paths == [feats.paths[i] for i in brute]
    np.testing.assert_array_equal(got.image, feats.image[brute])
    # a bank image skipped at extraction shifts the rows: matching by path still removes exactly the targets
    skipped = feats.subset(np.r_[0:10, 11:1000])
    got = adversarial.bank_without(skipped, targets.paths)
    assert got.paths == [p for p in skipped.paths if p not in set(targets.paths)]
    assert len(got) == 999 - len(set(rows.tolist()) - {10})


def test_memory_bank_is_extracted_without_patch_features(smoke_model, tmp_cache, monkeypatch):
    """Issue 22, item 2: the bank gets ``train_kinds`` (no ``local``), the ID / OOD sets their own kinds and the
    same cache entries as without a bank. Memory (numpy's allocations, traced): the extraction with the bank's patch
    features needs them at least once; the bank's extraction now peaks below that peak less one copy of them."""
    import tracemalloc

    from helpers import benchmark

    asked = []
    extract = benchmark.extract_features

    def recording(loaded, ds, **kw):
        asked.append((ds.name, tuple(kw["kinds"])))
        return extract(loaded, ds, **kw)

    monkeypatch.setattr(benchmark, "extract_features", recording)
    kinds = ("image", "preproj", "local")
    common = dict(kinds=kinds, workers=0, progress=False)
    id_ds, ood_ds = get_dataset("cifar10-test", max_per_class=2), get_dataset("dtd10", max_per_class=2)
    plain = benchmark.load_benchmark(smoke_model, id_ds, [ood_ds], **common)
    bank = get_dataset("cifar10-probe", max_per_class=100)  # 1,000 images: one extraction chunk

    def load(train_kinds):  # the datasets are scanned already: the peak is the extraction's
        tracemalloc.start()
        try:
            b = benchmark.load_benchmark(smoke_model, id_ds, [ood_ds], train_dataset=bank,
                                         train_kinds=train_kinds, **common)
            return b, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    bench, peak = load(("image", "preproj"))
    assert bench.train.local is None and bench.train.preproj is not None and bench.train.image is not None
    assert asked[-1] == ("cifar10-probe", ("image", "preproj"))
    assert bench.train.meta["key"]["kinds"] == ["image", "preproj"]
    for name, f in bench.sets().items():  # the ID and OOD sets: their kinds, from the cache entries written above
        assert f.local is not None and f.meta["from_cache"] and f.meta["key"] == plain.sets()[name].meta["key"]

    visual = smoke_model.model.visual
    patches = int(np.prod(visual.grid_size))
    local_bytes = len(bank) * patches * visual.output_dim * 2  # the bank's fp16 patch features
    with_local, peak_local = load(None)  # the former call: the bank gets the ID set's kinds
    assert with_local.train.local is not None and with_local.train.local.nbytes == local_bytes
    assert peak_local >= local_bytes, (peak_local, local_bytes)
    # the cap: the former call's peak less one copy of the bank's patch features (ImageNet train: ~257 GB)
    assert peak < peak_local - local_bytes, f"the bank's extraction peaked at {peak} bytes, the former {peak_local}"


def test_curve_detectors_are_the_first_and_the_first_mcm():
    specs = [{"name": "knn", "feature": "preproj", "standardize": False}, {"name": "knn"}, "mahalanobis",
             {"name": "mcm", "T": 1.0}, {"name": "mcm", "T": 2.0}]
    assert adversarial.curve_detectors(specs) == [specs[0], specs[3]]
    assert adversarial.curve_detectors(specs[:3]) == [specs[0]]
