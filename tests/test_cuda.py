"""CUDA checks: what only a GPU exercises, in a few minutes on one GPU.

Run on a machine with a CUDA GPU (the teaching data prepared, the pocket CLIPs cached or trainable)::

    pytest -m cuda tests/test_cuda.py

Every test is marked ``cuda`` and is skipped, with the reason, when ``torch.cuda.is_available()`` is False, so the
file is harmless in the CPU suite. ``CLIPOOD_CUDA_TESTS_DEVICE=cpu pytest tests/test_cuda.py`` runs the same
code on the CPU (AMP is bf16 there): a check of the tests themselves, not of CUDA.

Covered: extraction fp32 vs AMP (global features min cosine > 0.999), MCM / GL-MCM scores and kNN on the GPU vs the
CPU (1e-5), a linear probe trained on the GPU vs on the CPU, one full fine-tuning step and one CoOp step under
AMP, a few pocket-CLIP training steps, the training loop under fp16 with its loss scaler vs fp32, and the GPU
decode path (nvJPEG + GPU resize) vs the CPU tensor path.
"""

import dataclasses
import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import detectors as det
from helpers.data import get_dataset
from helpers.decode import decode_items, preprocess_batch, read_item, tensor_transform
from helpers.features import cache_key, extract_features, text_features
from helpers.models import load_model
from helpers.torchtools import autocast

DEVICE = torch.device(os.environ.get("CLIPOOD_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run `pytest -m cuda "
                              "tests/test_cuda.py` on a GPU machine"),
]
KINDS = ("image", "preproj", "local")


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def gpu_model(require_data):
    return load_model("pocket:tiny-100", device=DEVICE)


@pytest.fixture(scope="module")
def cpu_model(require_data):
    return load_model("pocket:tiny-100")


@pytest.fixture(scope="module")
def small_sets(require_data):
    return {"cifar10-test": get_dataset("cifar10-test", max_per_class=8), "dtd10": get_dataset("dtd10", max_per_class=3)}


@pytest.mark.parametrize("spec", ["pocket:tiny-100", "ViT-B-16/random"])
def test_extraction_fp32_vs_amp(spec, small_sets, tmp_cache):
    loaded = load_model(spec, device=DEVICE, image_size=64 if spec.startswith("ViT") else None)
    for ds in small_sets.values():
        full = extract_features(loaded, ds, kinds=KINDS, amp=False, num_workers=0, progress=False, decode="pil")
        amp = extract_features(loaded, ds, kinds=KINDS, amp=True, num_workers=0, progress=False, decode="pil")
        assert amp.meta["key"]["autocast"] == ("fp16" if DEVICE.type == "cuda" else "bf16")
        assert cos_rows(full.image, amp.image).min() > 0.999, (spec, ds.name)
        assert cos_rows(full.preproj, amp.preproj).min() > 0.999, (spec, ds.name)
        assert cos_rows(full.local, amp.local).mean() > 0.99, (spec, ds.name)


def test_mcm_and_glmcm_scores_gpu_vs_cpu(gpu_model, cpu_model, small_sets, tmp_cache):
    """Scores of features extracted on the GPU, scored on the GPU, against the formula computed on the CPU."""
    ds = small_sets["cifar10-test"]
    f = extract_features(gpu_model, ds, kinds=("image", "local"), num_workers=0, progress=False, decode="pil")
    ref = extract_features(cpu_model, ds, kinds=("image", "local"), num_workers=0, progress=False)
    assert cos_rows(f.image, ref.image).min() > 0.9999
    text = text_features(cpu_model, ds.class_names, ["a photo of a {}"], use_cache=False).astype(np.float64)
    for spec in ({"name": "mcm", "T": 1.0}, {"name": "gl_mcm", "T": 1.0, "lam": 1.0}):
        gpu = det.get(spec).to(DEVICE).fit(gpu_model, ds.class_names)
        s = gpu(f)
        softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(  # noqa
            -1, keepdims=True)
        want = softmax(f.image.astype(np.float64) @ text.T).max(-1)
        if spec["name"] == "gl_mcm":
            want = want + softmax(f.local.astype(np.float64) @ text.T).max(-1).max(-1)
        np.testing.assert_allclose(s, want, atol=1e-5)


def test_knn_gpu_equals_cpu():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(5000, 64, generator=g, dtype=torch.float64), dim=1).float()
    query = F.normalize(torch.randn(300, 64, generator=g, dtype=torch.float64), dim=1).float()
    for k, reduction in ((1, "kth"), (10, "kth"), (10, "mean")):
        cpu = det.knn_score(query, bank, k, reduction)
        gpu = det.knn_score(query.to(DEVICE), bank.to(DEVICE), k, reduction, bank_chunk=1024).cpu()
        brute = (query.double() @ bank.double().T).topk(k, dim=1).values
        want = brute[:, -1] if reduction == "kth" else brute.mean(1)
        np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=1e-5)
        np.testing.assert_allclose(gpu.numpy(), want.numpy(), atol=1e-5)


def test_linear_probe_on_gpu_matches_cpu():
    from helpers.probes.linear import train_linear_probe

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 32)) * 2
    y = rng.integers(0, 5, 1000)
    x = (centers[y] + rng.normal(size=(1000, 32))).astype(np.float32)
    gpu = train_linear_probe(x, y, epochs=30, batch_size=128, device=DEVICE)
    cpu = train_linear_probe(x, y, epochs=30, batch_size=128, device="cpu")
    pg, pc = gpu.predict(x), cpu.predict(x)
    assert (pg == y).mean() > 0.9 and abs((pg == y).mean() - (pc == y).mean()) < 0.02
    assert (pg == pc).mean() > 0.97
    np.testing.assert_allclose(gpu.logits(x), cpu.logits(x), atol=0.05 * np.abs(cpu.logits(x)).max())


def test_full_finetuning_step_under_amp(gpu_model, small_sets, tmp_cache):
    from helpers.finetune.full import finetune_image_tower

    ds = small_sets["cifar10-test"]
    text = text_features(gpu_model, ds.class_names, ["a photo of a {}."])
    before = {k: v.detach().clone() for k, v in gpu_model.model.visual.state_dict().items()}
    ft = finetune_image_tower(gpu_model, ds, text, epochs=1, batch_size=len(ds), amp=True, use_cache=False)
    assert len(ft.history) == 1 and np.isfinite(ft.history[0]["loss"])
    after = ft.loaded.model.visual.state_dict()
    assert next(iter(after.values())).device.type == DEVICE.type
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the copy was trained...
    assert all(torch.equal(v, before[k]) for k, v in gpu_model.model.visual.state_dict().items())  # ...not the base
    f = extract_features(ft.loaded, ds, kinds=("image",), num_workers=0, progress=False, amp=True, decode="pil")
    assert np.isfinite(f.image).all()


def test_coop_step_under_amp(gpu_model, small_sets, tmp_cache):
    from helpers.finetune.coop import train_coop

    ds = small_sets["cifar10-test"]
    f = extract_features(gpu_model, ds, kinds=("image",), num_workers=0, progress=False, decode="pil")
    with autocast(DEVICE, True):
        p = train_coop(gpu_model, f.image, f.labels, ds.class_names, n_ctx=4, epochs=1, batch_size=len(ds))
    assert len(p.history) == 1 and np.isfinite(p.history[0]["loss"])
    assert p.text.shape == (len(ds.class_names), f.image.shape[1]) and np.isfinite(p.ctx).all()
    assert np.allclose(np.linalg.norm(p.text, axis=1), 1, atol=1e-3)
    assert all(q.grad is None for q in gpu_model.model.parameters())


def test_pocket_training_steps(tmp_path, tmp_cache, require_data):
    from helpers.models.pocket import get_config, train_pocket

    cfg = dataclasses.replace(get_config("tiny-100"), name="cuda-check", epochs=0.25, eval_max_per_class=2)
    report = train_pocket(cfg, tmp_path / "pocket", device=DEVICE, progress=False)
    assert report["device"].startswith(DEVICE.type) and report["steps"] >= 3
    assert all(np.isfinite(r["loss"]) for r in report["log"])
    trained = load_model(cfg.arch, str(tmp_path / "pocket" / "open_clip_model.safetensors"), device=DEVICE)
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())


def test_gpu_decode_path_vs_cpu_tensor_path(gpu_model, cpu_model, small_sets, tmp_path, tmp_cache):
    """nvJPEG + GPU resize against libjpeg-turbo + CPU resize: the same tensor code on another device and
    decoder. The resize alone (same uint8 input) agrees to float precision; the features to cosine > 0.99."""
    t = tensor_transform(gpu_model.preprocess)
    ds = small_sets["dtd10"]
    idx = list(range(len(ds)))
    pixels = decode_items([read_item(ds, i) for i in idx], idx, ds, torch.device("cpu"))
    on_cpu = preprocess_batch(pixels, t)
    on_gpu = preprocess_batch([p.to(DEVICE) for p in pixels], t).cpu()
    assert (on_gpu - on_cpu).abs().max() < 4.1 / 255 / 0.26  # float rounding on ties: a few levels at most
    assert (on_gpu - on_cpu).abs().mean() < 1e-3
    for ds in small_sets.values():
        g = extract_features(gpu_model, ds, kinds=("image",), num_workers=1, progress=False, decode="tensor")
        c = extract_features(cpu_model, ds, kinds=("image",), num_workers=0, progress=False, decode="tensor")
        assert g.paths == c.paths == ds.paths
        assert cos_rows(g.image, c.image).min() > 0.99, ds.name
    key = cache_key(gpu_model, ds, ("image",), "fp32", "tensor")
    assert key["decode"] == ("tensor/nvjpeg" if DEVICE.type == "cuda" else "tensor/libjpeg-turbo")
    # fallbacks in the same batch on the GPU path: a PNG, a grayscale and a CMYK JPEG, a truncated one (skipped)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    root = tmp_path / "odd" / "x"
    root.mkdir(parents=True)
    for name, im in (("rgb.jpg", rgb), ("gray.jpg", rgb.convert("L")), ("cmyk.jpg", rgb.convert("CMYK"))):
        im.save(root / name, "JPEG")
    rgb.save(root / "png.png")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    odd = get_dataset(str(root.parent), on_error="skip")
    g = extract_features(gpu_model, odd, kinds=("image",), num_workers=0, progress=False, decode="tensor")
    p = extract_features(cpu_model, odd, kinds=("image",), num_workers=0, progress=False, decode="pil")
    assert g.failed == p.failed == ["x/truncated.jpg"] and g.paths == p.paths
    assert cos_rows(g.image, p.image).min() > 0.99


def test_fit_under_fp16_scales_the_loss_and_matches_fp32():
    """The training loop under CUDA AMP: fp16 autocast with a GradScaler (bf16 on the CPU, no scaler); a small
    classifier trained both ways ends within a tolerance of the fp32 weights, and the scaler's scale is kept."""
    from helpers import training

    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()

    def run(amp):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        out = training.fit(model, model.parameters(), lambda m, idx, ctx: (F.cross_entropy(
            m(x[idx].to(ctx.device)).float(), y[idx].to(ctx.device)), {}), training.Batches(64, 16),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1), epochs=3, device=DEVICE, amp=amp)
        return model, out

    m32, r32 = run(False)
    m16, r16 = run(True)
    assert r32.precision == "fp32" and r16.precision == ("fp16" if DEVICE.type == "cuda" else "bf16")
    for a, b in zip(m32.parameters(), m16.parameters()):
        assert torch.allclose(a.float().cpu(), b.float().cpu(), atol=2e-2)
    assert r16.history[-1]["loss"] < r16.history[0]["loss"]
