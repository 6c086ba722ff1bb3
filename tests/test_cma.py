"""Notebook 06's pieces: CMA's loss, the modality-gap measures, contrastive fine-tuning as a derived model."""

import math

import numpy as np
import pytest
import torch

from helpers import gap
from helpers.data import get_dataset
from helpers.features import Features
from helpers.finetune import cma_loss, contrastive_finetune


def test_cma_loss_equals_the_published_formula_by_hand():
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.5, 2.0, 0.0], [1.0, -1.0, 4.0]], dtype=torch.float64)
    lam = 0.3
    rows, cols = logits.tolist(), logits.T.tolist()

    def direction(m):  # mean over rows of CE(diagonal) + λ · (−log Σ exp)
        return sum(-r[i] + (1 - lam) * math.log(sum(math.exp(v) for v in r)) for i, r in enumerate(m)) / len(m)

    assert cma_loss(logits, lam).item() == pytest.approx((direction(rows) + direction(cols)) / 2, rel=1e-12)


def test_lambda_zero_is_clips_symmetric_contrastive_loss():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(100.0)
    reference = ClipLoss()(img, txt, scale)  # open_clip's own implementation
    assert cma_loss(scale * img @ txt.T, 0.0).item() == pytest.approx(reference.item(), rel=1e-6)


def test_the_regulariser_pulls_images_and_prompts_together():
    # one gradient step on the embeddings: with λ > 0 every image-text cosine grows more than with λ = 0
    g = torch.Generator().manual_seed(1)
    img0 = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1)
    txt0 = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1)

    def stepped(lam):
        img, txt = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
        cma_loss(10 * img @ txt.T, lam).backward()
        with torch.no_grad():
            a = torch.nn.functional.normalize(img - 0.05 * img.grad, dim=-1)
            b = torch.nn.functional.normalize(txt - 0.05 * txt.grad, dim=-1)
        return (a @ b.T).mean().item()

    assert stepped(1.0) > stepped(0.0)


def test_gap_measures_on_a_configuration_with_a_known_gap():
    # images at e1 ± a small tilt towards e3, prompts at e2: centroids (1, 0, 0) and (0, 1, 0) up to the tilt
    s = math.sin(0.1)
    image = np.array([[math.cos(0.1), 0, s], [math.cos(0.1), 0, -s]])
    text = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = gap.gap_measures(image, np.array([0, 0]), text)
    assert m["centroid gap"] == pytest.approx(math.sqrt(math.cos(0.1) ** 2 + 1))
    assert m["image·own prompt"] == pytest.approx(0.0, abs=1e-12)
    assert m["image·other prompts"] == pytest.approx(0.0, abs=1e-12)  # ±s average out
    assert m["image·image"] == pytest.approx(math.cos(0.2))
    assert m["alignment"] == pytest.approx(2.0)  # orthogonal unit vectors: |x - t|² = 2
    # an OOD image is paired with the prompt it is closest to: the first with e3 (cos s), the second with e2
    # (cos 0 beats −s)
    sets = {name: Features(name, "toy", labels, ["a", "b"], ["c"], ["c"], image=image)
            for name, labels in (("id", np.array([0, 0])), ("ood", np.array([-1, -1])))}
    table = gap.gap_by_set(sets, text, "id")
    ood = table.set_index("set").loc["ood"]
    assert ood["role"] == "OOD" and ood["image·own prompt"] == pytest.approx(s / 2)
    assert ood["centroid gap"] == pytest.approx(np.linalg.norm(image.mean(0) - (text[1] + text[0]) / 2))


@pytest.fixture(scope="module")
def probe_split(require_data):
    return get_dataset("cifar10-probe", max_per_class=6)


def test_contrastive_finetune_is_a_cached_derived_model(smoke_model, probe_split, tmp_cache):
    before = {k: v.clone() for k, v in smoke_model.model.state_dict().items()}
    args = dict(lam=0.001, epochs=2, batch_size=20, lr=1e-4, warmup=1, seed=0)
    a = contrastive_finetune(smoke_model, probe_split, **args)
    assert a.loaded.parent == smoke_model.model_id and "+cma:" in a.loaded.model_id
    assert a.loaded.image_id != smoke_model.image_id and a.loaded.text_id != smoke_model.text_id
    assert not a.from_cache and len(a.history) == 2
    assert all(torch.equal(v, smoke_model.model.state_dict()[k]) for k, v in before.items())  # base untouched
    moved = [k for k, v in a.loaded.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("visual.") for k in moved) and any(k.startswith("transformer.") for k in moved)
    assert "logit_scale" not in moved  # not trained unless asked
    b = contrastive_finetune(smoke_model, probe_split, **args)
    assert b.from_cache and b.loaded.model_id == a.loaded.model_id
    c = contrastive_finetune(smoke_model, probe_split, **{**args, "lam": 0.0})
    assert c.loaded.model_id != a.loaded.model_id


def test_cma_closes_the_id_gap_more_than_plain_finetuning(smoke_model, probe_split, tmp_cache):
    from helpers.benchmark import load_benchmark

    ev = get_dataset("cifar10-test", max_per_class=10)
    gaps = {}
    for lam in (0.0, 1.0):
        ft = contrastive_finetune(smoke_model, probe_split, lam=lam, epochs=3, batch_size=20, lr=3e-4, warmup=1)
        bench = load_benchmark(ft.loaded, ev, [], kinds=("image",), progress=False)
        gaps[lam] = gap.benchmark_gap(bench).set_index("set").loc["cifar10-test", "centroid gap"]
    assert gaps[1.0] < gaps[0.0] - 0.02, gaps


def test_fixed_logit_scale_pretraining_makes_a_larger_gap(require_data):
    from helpers.benchmark import load_benchmark
    from helpers.models import load_model

    ev = get_dataset("cifar10-test", max_per_class=20)
    m = {}
    for name in ("tiny-100", "tiny-100-fixed"):
        bench = load_benchmark(load_model(f"pocket:{name}"), ev, [], kinds=("image",), progress=False)
        m[name] = gap.benchmark_gap(bench).set_index("set").loc["cifar10-test"]
    assert m["tiny-100-fixed"]["centroid gap"] > m["tiny-100"]["centroid gap"] + 0.1, m
    # the mechanism (Liang et al.): images stay in a narrow cone, far from the prompts' cone
    assert m["tiny-100-fixed"]["image·image"] > m["tiny-100"]["image·image"]
    assert m["tiny-100-fixed"]["image·own prompt"] < m["tiny-100"]["image·own prompt"]


@pytest.mark.notebook
def test_notebook_06_runs_in_the_smoke_profile(smoke_series):
    import pandas as pd

    res = smoke_series.results("06_cma")
    scores = pd.read_csv(res / "scores.csv")
    assert set(scores.method) == {"zero-shot", "FLYP (λ=0)", "CMA (λ=0.1)"}
    lam = scores.groupby("method")["lam"].unique()  # each run's λ in its own column; zero-shot has none
    assert list(lam["CMA (λ=0.1)"]) == [0.1] and list(lam["FLYP (λ=0)"]) == [0.0] and lam["zero-shot"][0] != lam["zero-shot"][0]
    assert set(scores.model) == {"pocket:tiny-100", "pocket:tiny-100+cma", "pocket:tiny-100-fixed",
                                 "pocket:tiny-100-fixed+cma"}
    main_runs = scores[(scores.model == "pocket:tiny-100+cma")].groupby("method").seed.unique()
    assert all(sorted(s) == [0, 1] for s in main_runs)  # every claim λ with every seed, for the pairing
    gaps = pd.read_csv(res / "gap.csv")
    assert set(gaps.role) == {"ID", "OOD"} and gaps["centroid gap"].between(0, 2).all()
    claims = pd.read_csv(res / "claims.csv")
    assert len(claims) == 2 * 4 and set(claims.verdict) <= {"holds", "reversed", "within noise"}
    assert {"projection.png", "gap_vs_lambda.png", "auroc_vs_gap.png"} <= {
        p.name for p in smoke_series.figures("06_cma").glob("*.png")}
