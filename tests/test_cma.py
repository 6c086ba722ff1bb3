"""Notebook 06's pieces: CMA's loss, the modality-gap measures, contrastive fine-tuning as a derived model."""

import json
import math
import os
from pathlib import Path

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
    assert len(claims) == 2 * 5 and set(claims.verdict) <= {"holds", "reversed", "within noise"}
    # NegLabel with CMA's one fixed word list (mined by the zero-shot model) and with each model's own
    neglabel = scores[(scores.detector == "neglabel") & (scores.method == "CMA (λ=0.1)")]
    assert sorted(neglabel.params.map(lambda j: json.loads(j)["mining"]).unique()) == ["fixed", "own"]
    # each experiment's zero-shot model mines its own fixed list (the sweep model's is not the main model's)
    zero = scores[(scores.method == "zero-shot") & (scores.detector == "neglabel")].set_index(["model", "ood_set"])
    fixed, own = (zero[zero.detector_label == f"NegLabel (T=0.01, n_groups=1{m})"].auroc
                  for m in (", mining=fixed", ""))
    assert len(fixed) == 2 * 4 and fixed.equals(own.loc[fixed.index])
    assert {"projection.png", "gap_vs_lambda.png", "auroc_vs_gap.png"} <= {
        p.name for p in smoke_series.figures("06_cma").glob("*.png")}


def test_the_regulariser_at_the_published_lambda_survives_in_fp32():
    # fp32, the precision the fine-tuning keeps: ∇cma_loss(λ=0.001) − ∇cma_loss(λ=0) equals λ times the gradient of
    # the mean −LSE terms, written out by hand (exp, sum, log in float64) and differentiated separately
    g = torch.Generator().manual_seed(3)
    img0 = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    txt0 = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)

    def grads(loss_of, dtype):
        img, txt = img0.to(dtype, copy=True).requires_grad_(), txt0.to(dtype, copy=True).requires_grad_()
        loss_of(100 * img @ txt.T).backward()
        return torch.cat([img.grad.flatten(), txt.grad.flatten()])

    def energy_terms(logits):  # ½[mean_i −log Σ_j e^{L_ij} + mean_j −log Σ_i e^{L_ij}]
        e = logits.exp()
        return (-e.sum(1).log().mean() - e.sum(0).log().mean()) / 2

    lam = 0.001
    difference = grads(lambda z: cma_loss(z, lam), torch.float32) - grads(lambda z: cma_loss(z, 0.0), torch.float32)
    expected = lam * grads(energy_terms, torch.float64).float()
    assert (difference - expected).norm() < 1e-3 * expected.norm()
    assert expected.norm() > 1e-4 * grads(lambda z: cma_loss(z, 0.0), torch.float32).norm()  # not a zero term


def test_lambda_0001_trains_other_weights_than_lambda_0_and_a_run_repeats_bit_for_bit(smoke_model, probe_split,
                                                                                        tmp_cache):
    args = dict(epochs=2, batch_size=20, lr=1e-4, warmup=1, seed=0, amp=False, workers=2, use_cache=False)
    runs = {lam: contrastive_finetune(smoke_model, probe_split, lam=lam, **args) for lam in (0.0, 0.001)}
    again = contrastive_finetune(smoke_model, probe_split, lam=0.001, **{**args, "workers": 0})
    assert runs[0.001].config["precision"] == "fp32"

    def trained(ft):
        return torch.cat([v.flatten() for k, v in ft.loaded.model.state_dict().items() if k != "logit_scale"])

    base = torch.cat([v.flatten() for k, v in smoke_model.model.state_dict().items() if k != "logit_scale"])
    assert torch.equal(trained(again), trained(runs[0.001]))  # same λ and seed: bit-identical (any thread count)
    moved = (trained(runs[0.0]) - base).norm()
    apart = (trained(runs[0.001]) - trained(runs[0.0])).norm()
    # the regulariser's share of the update: far above fp32 rounding (1.2e-7 of a weight), far below the update
    assert 1e-5 * moved < apart < 0.5 * moved, (apart / moved).item()


def test_weight_decay_applies_to_biases_under_all_and_not_under_matrices(smoke_model, probe_split, tmp_cache):
    # one AdamW step (the whole split as one batch, lr at its peak): both runs see the same gradient, so the weights
    # differ by exactly the decay one of them skips: −lr·wd·p0 on the parameters "matrices" exempts (1-d ones and
    # embeddings), nothing elsewhere
    lr, wd = 1e-2, 0.1
    args = dict(epochs=1, batch_size=len(probe_split), lr=lr, weight_decay=wd, warmup=1, use_cache=False)
    out = {decay: contrastive_finetune(smoke_model, probe_split, decay=decay, **args) for decay in ("all", "matrices")}
    assert out["all"].config["steps"] == 1
    start = dict(smoke_model.model.named_parameters())
    after = {decay: dict(ft.loaded.model.named_parameters()) for decay, ft in out.items()}
    exempt = [k for k, p in start.items() if k != "logit_scale" and (p.ndim < 2 or "embedding" in k)]
    assert "visual.transformer.resblocks.0.attn.in_proj_bias" in exempt and "token_embedding.weight" in exempt
    for k, p0 in start.items():
        difference = (after["all"][k] - after["matrices"][k]).detach()
        if k in exempt:
            torch.testing.assert_close(difference, -lr * wd * p0.detach(), rtol=1e-3, atol=1e-7)
            assert p0.abs().max() == 0 or difference.abs().max() > 0, k
        else:
            assert torch.equal(difference, torch.zeros_like(difference)), k  # decayed (or frozen) in both
    with pytest.raises(ValueError, match="decay"):
        contrastive_finetune(smoke_model, probe_split, decay="norms", **args)


_STREAMED_TRAINING = r"""
import gc, json, os, resource, sys

import helpers.data.arrays as arrays
from helpers.data import get_dataset
from helpers.models import load_model

model = load_model("pocket:tiny-100")  # its own training decodes; the fine-tuning must not
assert "helpers.finetune.cma" not in sys.modules


def refuse(*args, **kwargs):
    raise AssertionError("decoded_images was called: the whole training set would be decoded into memory")


arrays.decoded_images = refuse  # before helpers.finetune is imported, so that an imported name is the refusal too

from helpers.finetune import contrastive_finetune  # noqa: E402


def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))


def peak_growth(fn):
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # the peak resident size restarts from the current one
    before = status("VmRSS")
    out = fn()
    return status("VmHWM") - before, out


os.environ["CLIPOOD_CACHE"] = sys.argv[2]
ds = get_dataset(sys.argv[1])
cap = int(sys.argv[3])
args = dict(epochs=1, batch_size=20, lr=1e-4, warmup=1, workers=2, use_cache=False)
for _ in range(2):  # the first run also pays for what a process sets up once (threads, lazy imports)
    small, _ = peak_growth(lambda: contrastive_finetune(model, ds.subset(range(20)), **args))  # one batch
ds.content_fingerprint()
resource.setrlimit(resource.RLIMIT_DATA, (status("VmData") + cap,) * 2)  # the hard cap
large, ft = peak_growth(lambda: contrastive_finetune(model, ds, **args))
print(json.dumps({"small": small, "large": large, "steps": ft.config["steps"]}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to measure peak memory")
def test_training_streams_its_images_under_a_memory_cap(smoke_model, tmp_path):
    # 240 images of 800 x 800: decoded whole they are 461 MB; the fine-tuning must read them a batch at a time from
    # their files, under a cap of a third of that on the process's data, and its peak memory must not grow with
    # the set (one batch of 20 images against all 240)
    import subprocess
    import sys

    from PIL import Image

    import helpers

    n, side = 240, 800
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    encoded = []
    for k in range(6):  # six distinct pictures, copied: the bytes do not matter to memory, the pixels do
        pic = (np.stack([xx * (k + 1), yy * (k + 2), xx + yy], -1) * 255 // (2 * side) + rng.integers(0, 32, (side,
               side, 3))) % 256
        path = tmp_path / f"pic{k}.jpg"
        Image.fromarray(pic.astype(np.uint8)).save(path, quality=85)
        encoded.append(path.read_bytes())
    for i in range(n):
        (tmp_path / "set" / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / f"class{i % 3}" / f"{i:04d}.jpg").write_bytes(encoded[i % 6])
    whole = n * side * side * 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(helpers.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _STREAMED_TRAINING, str(tmp_path / "set"), str(tmp_path / "cache"),
                          str(whole // 3)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["steps"] == n // 20
    assert out["large"] - out["small"] < whole / 10, {k: v / 2**20 for k, v in out.items()}


def test_with_miner_names_the_experiments_zero_shot_model():
    from types import SimpleNamespace

    from helpers.finetune.cma import with_miner

    specs = [{"name": "mcm", "T": 1.0}, {"name": "neglabel", "mining": "fixed"},
             {"name": "neglabel", "mining": "fixed", "mined_by": "other"}, "neglabel"]
    out = with_miner(specs, SimpleNamespace(name="pocket:tiny"))
    assert out[0] == specs[0] and out[2] == specs[2]
    assert out[1]["mined_by"] == "pocket:tiny" and out[1]["mining"] == "fixed"
    assert out[3]["mined_by"] == "pocket:tiny" and out[3]["mining"] == "own"
