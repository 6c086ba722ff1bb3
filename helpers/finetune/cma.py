r"""Multimodal (both-tower) contrastive fine-tuning, with CMA's modality-gap regulariser.

FLYP (Goyal et al., CVPR 2023, *Finetune like you pretrain*): fine-tune CLIP with its own pretraining loss.
Each training image $x_i$ of a batch is paired with the prompt of its class, $t_i$ = "a photo of a {class}";
with $L = \tau\, \hat X \hat T^\top$ ($B \times B$, $\tau = e^{\text{logit\_scale}}$) the loss is CLIP's symmetric
cross-entropy with the diagonal as target. Images of the same class share a prompt, so a batch holds repeated
columns; FLYP and CMA keep the ``arange(B)`` target anyway (on ImageNet repeats are rare; on 10 classes they are
the rule: the loss then cannot go below ``log`` of the repeats, its gradient still separates the classes).

CMA (Kim & Hwang, CVPR 2025, *Enhanced OoD Detection through Cross-Modal Alignment of Multi-modal
Representations*, ``ma-kjh/CMA-OoDD`` ``train.py`` / ``utils/train_utils.py``) adds, in each direction, the mean
negative log-sum-exp of the logits, weighted by $\lambda$:

.. math::

    \mathcal L = \tfrac12\big[\mathrm{CE}(L, \mathrm{diag}) + \lambda\,\overline{-\mathrm{LSE}_j L_{ij}}\big]
               + \tfrac12\big[\mathrm{CE}(L^\top, \mathrm{diag}) + \lambda\,\overline{-\mathrm{LSE}_i L_{ij}}\big].

$-\mathrm{LSE}$ is the energy of a row; lowering it raises every image–text similarity of ID data, which pulls the
two modalities' embeddings together: it closes the modality gap (:mod:`helpers.gap`) for ID data only, so that ID
images end closer to the ID prompts than OOD images do. $\lambda = 0$ is plain FLYP.

Published (ImageNet, B/16): $\lambda$ = 0.001, 10 epochs, batch 512, AdamW lr 1e-5, weight decay 0.1, cosine with
500 warm-up steps, ``RandomResizedCrop(224, scale=(0.9, 1))`` bicubic; training prompt "a photo of a {}"
(their ``--prompt-name``), inference prompt "The nice {}", scored by NegLabel (no grouping, T = 0.01) and MCM.
Here: the same defaults; the logit scale is not trained (``train_logit_scale``); warm-up and cosine are per step.

Under ``torchrun`` the training is data-parallel (:mod:`helpers.distributed`): every rank draws the global batch and
its crops' parameters as one process would, encodes its slice's images and prompts, and both embeddings are
gathered with their gradients (open_clip's ``gather_with_grad=True, local_loss=False``), so the loss is that of
the global batch and the step equals the single-process step up to float rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

from .. import distributed, training
from ..cache import code_hash
from ..data import ImageFolderDataset
from ..data.arrays import decoded_images
from ..models import LoadedModel, derive
from ..torchtools import adamw_groups, image_size, normalize_of
from .full import FineTuned

LAMBDA_CMA = 0.001  # published
TRAIN_PROMPT = "a photo of a {}"  # their --prompt-name "a photo of a" + class name


def cma_loss(logits: torch.Tensor, lam: float) -> torch.Tensor:
    """CMA's loss on image-to-text logits (B, B) whose diagonal pairs an image with its prompt (``lam`` = 0: the
    symmetric contrastive loss of CLIP / FLYP)."""
    target = torch.arange(len(logits), device=logits.device)
    i2t = F.cross_entropy(logits, target) - lam * torch.logsumexp(logits, dim=1).mean()
    t2i = F.cross_entropy(logits.T, target) - lam * torch.logsumexp(logits.T, dim=1).mean()
    return (i2t + t2i) / 2


def contrastive_finetune(loaded: LoadedModel, dataset: ImageFolderDataset, *, lam: float = LAMBDA_CMA,
                         prompt: str = TRAIN_PROMPT, epochs: int = 10, batch_size: int = 512, lr: float = 1e-5,
                         weight_decay: float = 0.1, warmup: int = 500, crop_scale: tuple = (0.9, 1.0),
                         train_logit_scale: bool = False, amp: bool = False, seed: int = 0, progress: bool = False,
                         use_cache: bool = True) -> FineTuned:
    """Fine-tune both towers of a copy of ``loaded`` on ``dataset`` (its class names fill ``prompt``) with
    :func:`cma_loss` at ``lam``; see the module docstring. ``warmup`` is in steps (capped at a tenth of the run);
    an epoch is ``N // batch_size`` batches (at least one). Returns the derived model
    (:func:`helpers.models.derive`, tag ``cma`` with its own feature caches) with the configuration and the
    per-epoch log; the trained weights are cached, keyed by the base model, the images, every argument and the
    training code."""
    config = {"lam": lam, "prompt": prompt, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "warmup": warmup, "crop_scale": list(crop_scale),
              "train_logit_scale": train_logit_scale, "amp": amp, "seed": seed}
    key = {"model": loaded.model_id, "images": dataset.content_fingerprint(), "classes": dataset.class_names,
           "labels": dataset.labels.tolist(), **config,
           "code": code_hash(_train_both, _Towers, _random_crops, cma_loss, decoded_images, training)}
    tensors, info, hit = distributed.cached_tensors("cma", loaded.model_id, key,
                                                    lambda: _train_both(loaded, dataset, progress=progress, **config),
                                                    use_cache=use_cache)
    tuned = derive(loaded, "cma", weights=tensors, info={"cma": info["config"]})
    return FineTuned(tuned, info["config"], info["history"], hit)


class _Towers(nn.Module):
    """Both towers of a CLIP, the module the loop trains: normalised embeddings of images (B, 3, H, W) and of
    tokenised prompts (C, L), in fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(self.model.encode_image(images).float(), dim=-1),
                F.normalize(self.model.encode_text(tokens).float(), dim=-1))


def _train_both(loaded: LoadedModel, dataset: ImageFolderDataset, *, lam, prompt, epochs, batch_size, lr,
                weight_decay, warmup, crop_scale, train_logit_scale, amp, seed, progress) -> tuple[dict, dict]:
    """:func:`contrastive_finetune`'s objective and parameters, trained by :func:`helpers.training.fit`:
    ``({parameter name: trained tensor}, info)``."""
    n = len(dataset)
    if n < 2:
        raise ValueError(f"dataset {dataset.name!r} has {n} image(s); contrastive fine-tuning needs a batch of 2+")
    device = training.prepare(loaded.device)
    model = copy.deepcopy(loaded.model).to(device)
    model.logit_scale.requires_grad_(train_logit_scale)
    norm = normalize_of(loaded.preprocess)
    size = image_size(model.visual)
    crop = transforms.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True,
                                        interpolation=transforms.InterpolationMode.BICUBIC)
    with distributed.main_first():  # one rank decodes into the cache, the others read it
        x_all = torch.from_numpy(decoded_images(dataset, size, progress=progress)).permute(0, 3, 1, 2)  # uint8 NCHW
    y_all = torch.from_numpy(dataset.labels)
    tokens = loaded.tokenizer([prompt.format(c) for c in dataset.class_names]).to(device)

    def objective(towers, idx, ctx):
        start, stop = distributed.shard_bounds(len(idx))
        x = torch.stack(_random_crops(crop, x_all[idx], start, stop)).float().div(255)
        x = transforms.functional.normalize(x, norm.mean, norm.std).to(device)
        present, inverse = torch.unique(y_all[idx[start:stop]].to(device), return_inverse=True)
        img, txt = towers(x, tokens[present])  # this rank's slice; then the embeddings of the global batch
        img, txt = distributed.all_gather_with_grad(img), distributed.all_gather_with_grad(txt[inverse])
        loss = cma_loss(model.logit_scale.exp().clamp(max=100) * img.float() @ txt.float().T, lam)
        return loss, {"image·own prompt": (img * txt).sum(1).mean()}

    batches = training.Batches(n, batch_size)
    total = epochs * batches.per_epoch
    towers = _Towers(model)
    run = training.fit(towers, adamw_groups([(k, p) for k, p in model.named_parameters() if p.requires_grad],
                                         weight_decay), objective, batches,
                    optimizer=lambda p: torch.optim.AdamW(p, lr=lr), epochs=epochs, device=device, amp=amp,
                    schedule=training.schedule_warmup_cosine(max(1, min(warmup, total // 10))), seed=seed,
                    generator=torch.default_generator,  # the crops draw from the global generator, seeded by fit
                    desc=f"contrastive fine-tune (λ={lam})", progress=progress)
    tensors = {k: p.detach().cpu().clone() for k, p in model.named_parameters()}
    info = {"config": {"lam": lam, "prompt": prompt, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                       "weight_decay": weight_decay, "warmup": warmup, "crop_scale": list(crop_scale),
                       "train_logit_scale": train_logit_scale, "amp": amp, "seed": seed, "steps": run.steps},
            "history": [{**h, "loss": round(h["loss"], 4), "image·own prompt": round(h["image·own prompt"], 4)}
                        for h in run.history]}
    return tensors, info


def _random_crops(crop: transforms.RandomResizedCrop, images: torch.Tensor, start: int, stop: int) -> list:
    """``crop`` of the images ``start:stop`` of the batch ``images`` (B, 3, H, W), the random crop boxes drawn for
    the whole batch in order, so the global random stream is the same whichever slice a rank crops."""
    out = []
    for i, img in enumerate(images):
        box = crop.get_params(img, crop.scale, crop.ratio)
        if start <= i < stop:
            out.append(transforms.functional.resized_crop(img, *box, crop.size, crop.interpolation,
                                                           antialias=crop.antialias))
    return out


def method_name(lam: float) -> str:
    """The ``method`` of a contrastive fine-tuning run in the long table: ``FLYP (λ=0)`` or ``CMA (λ=…)``, a name
    for display; select rows by the ``lam`` column, which :func:`cma_experiment` sets."""
    return "FLYP (λ=0)" if lam == 0 else f"CMA (λ={lam:g})"


@dataclass
class CMARuns:
    """What :func:`cma_experiment` produced: the evaluations, the gap table and the benchmark of every model
    (``benches[(method, seed)]``, zero-shot under seed 0)."""

    evaluations: list
    gaps: pd.DataFrame
    benches: dict = field(default_factory=dict)


def cma_experiment(bench, train: ImageFolderDataset, runs, detectors, *, train_args: dict, extract: dict,
                   gap_prompts: str | list[str] = "single", **evaluate_kwargs) -> CMARuns:
    """Zero-shot and one contrastive fine-tuning per ``(λ, seed)`` of ``runs`` on ``train``, each scored on
    ``bench``'s images by ``detectors`` (:func:`helpers.evaluation.evaluate`, ``evaluate_kwargs``: results_dir,
    n_boot, ...) and measured by :func:`helpers.gap.benchmark_gap` (``gap_prompts``). ``train_args`` go to
    :func:`contrastive_finetune`, ``extract`` to :meth:`Benchmark.with_model`. The gap table has the columns
    model (the base model), method, lam (NaN for zero-shot), seed, set, role and the measures."""
    from ..evaluation import evaluate
    from ..gap import benchmark_gap

    out = CMARuns([], pd.DataFrame())
    gaps = []

    def add(b, method, lam, seed, shots):
        factors = {} if lam != lam else {name: {"lam": lam} for name in b.ood}  # the λ column (not zero-shot)
        out.evaluations.append(evaluate(detectors, b, method=method, shots=shots, seed=seed, factors=factors,
                                        **evaluate_kwargs))
        gaps.append(benchmark_gap(b, gap_prompts).assign(model=bench.model.name, method=method, lam=lam, seed=seed))
        out.benches[(method, seed)] = b

    add(bench, "zero-shot", float("nan"), 0, 0)
    for lam, seed in runs:
        ft = contrastive_finetune(bench.model, train, lam=lam, seed=seed, **train_args)
        add(bench.with_model(ft.loaded, **extract), method_name(lam), lam, seed, "all")
    out.gaps = pd.concat(gaps, ignore_index=True)
    return out
