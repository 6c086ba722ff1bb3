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
    # the history equals an independent measurement of the final images
    f = adversarial.embed(smoke_model, a.images).detach()
    ft = adversarial.embed(smoke_model, t).detach()
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
    assert len(pd.read_csv(res / "auroc_drop.csv")) == 5
    assert {"examples.png", "attack_progress.png", "auroc_vs_eps.png"} <= {
        p.name for p in smoke_series.figures("07_adversarial").glob("*.png")}


def test_attack_grid_with_fewer_pairs_than_columns():
    import matplotlib.pyplot as plt

    from helpers import plots

    imgs = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    fig = plots.attack_grid({"source": imgs, "δ smooth": imgs - 0.5, "target": imgs}, n=6)
    assert len(fig.axes) == 3 * 4, "one column per pair when there are fewer pairs than columns"
    plt.close(fig)
