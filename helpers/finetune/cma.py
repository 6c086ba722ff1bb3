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

Published (ImageNet, B/16): $\lambda$ = 0.001, 10 epochs, batch 512, AdamW lr 1e-5, weight decay 0.1 on every
parameter, cosine with 500 warm-up steps, ``RandomResizedCrop(224, scale=(0.9, 1))`` bicubic of the original image
(FLYP's training transform, ``locuslab/FLYP`` ``clip/clip.py`` ``_transform``; no flip), training prompt "a photo of
a {}" (their ``--prompt-name``), inference prompt "The nice {}", scored by NegLabel (no grouping, T = 0.01) and MCM.
Here: the same defaults; the logit scale is not trained (``train_logit_scale``); warm-up and cosine are per step.

- **Crops.** The training images are read from their files one batch at a time
  (:class:`helpers.data.stream.StreamedImages`, ``workers`` threads) and each is cropped from the *original* image,
  as the official transform does, never from a decoded copy of the whole set: memory is one batch whatever the
  dataset (ImageNet-1k train decoded at 224 px would be 193 GB). A crop's randomness is keyed by (``seed``, step,
  row) instead of a DataLoader worker's generator: the same distribution of boxes, another random stream.
- **Weight decay** (``decay``). ``"all"`` (default, published): one AdamW group, every trained parameter decayed,
  as FLYP's ``src/models/flyp_loss.py`` builds its optimiser (``AdamW(params, lr=args.lr, weight_decay=args.wd)``
  over all parameters; CMA's README names FLYP's code as its base). ``"matrices"``: weight matrices only, biases,
  norms and embeddings exempt (:func:`helpers.torchtools.adamw_groups`, the package's earlier rule).
- **Precision** (``amp``). Default ``False``: fp32, as FLYP's loop trains (no autocast, no ``GradScaler``).
  ``True`` trains under autocast, bf16 on CPU and fp16 on CUDA with :func:`helpers.training.fit`'s
  ``GradScaler``; at $\lambda$ = 0.001 the regulariser moves a gradient by about 0.1 %, near fp16's rounding
  step (2^-11 relative), so the published comparison should stay in fp32.

Under ``torchrun`` the training is data-parallel (:mod:`helpers.distributed`): every rank draws the global batch's
rows as one process would, reads and crops only its slice's images (the crops equal one process's, being keyed by
step and row), encodes them and their prompts, and both embeddings are gathered with their gradients (open_clip's
``gather_with_grad=True, local_loss=False``), so the loss is that of the global batch and the step equals the
single-process step up to float rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, training
from ..cache import code_hash
from ..data import ImageFolderDataset, stream
from ..models import LoadedModel, derive
from ..torchtools import adamw_groups, amp_precision, image_size, normalize_of
from .full import FineTuned

LAMBDA_CMA = 0.001  # published
TRAIN_PROMPT = "a photo of a {}"  # their --prompt-name "a photo of a" + class name
DECAY = ("all", "matrices")  # which parameters AdamW's weight decay applies to; "all" is published


def cma_loss(logits: torch.Tensor, lam: float) -> torch.Tensor:
    """CMA's loss on image-to-text logits (B, B) whose diagonal pairs an image with its prompt (``lam`` = 0: the
    symmetric contrastive loss of CLIP / FLYP)."""
    target = torch.arange(len(logits), device=logits.device)
    i2t = F.cross_entropy(logits, target) - lam * torch.logsumexp(logits, dim=1).mean()
    t2i = F.cross_entropy(logits.T, target) - lam * torch.logsumexp(logits.T, dim=1).mean()
    return (i2t + t2i) / 2


def contrastive_finetune(loaded: LoadedModel, dataset: ImageFolderDataset, *, lam: float = LAMBDA_CMA,
                         prompt: str = TRAIN_PROMPT, epochs: int = 10, batch_size: int = 512, lr: float = 1e-5,
                         weight_decay: float = 0.1, decay: str = "all", warmup: int = 500,
                         crop_scale: tuple = (0.9, 1.0), train_logit_scale: bool = False, amp: bool | str = False,
                         seed: int = 0, workers: int | None = None, progress: bool = False,
                         use_cache: bool = True) -> FineTuned:
    """Fine-tune both towers of a copy of ``loaded`` on ``dataset`` (its class names fill ``prompt``) with
    :func:`cma_loss` at ``lam``; see the module docstring. ``decay``: ``"all"`` or ``"matrices"`` (which parameters
    ``weight_decay`` applies to, :func:`param_groups`). ``warmup`` is in steps (capped at a tenth of the run); an
    epoch is ``N // batch_size`` batches (at least one). ``workers``: threads that read a batch's images (None: the
    CPU count, at most 8; 0: this thread); it does not change the result. Returns the derived model
    (:func:`helpers.models.derive`, tag ``cma`` with its own feature caches) with the configuration and the
    per-epoch log; the trained weights are cached, keyed by the base model, the images, every argument that
    changes them, the precision they train in and the training code."""
    if decay not in DECAY:
        raise ValueError(f"decay={decay!r}: expected one of {DECAY} ('all': every parameter, as published)")
    config = {"lam": lam, "prompt": prompt, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "decay": decay, "warmup": warmup, "crop_scale": list(crop_scale),
              "train_logit_scale": train_logit_scale, "amp": amp, "seed": seed}
    key = {"model": loaded.model_id, "images": dataset.content_fingerprint(), "classes": dataset.class_names,
           "labels": dataset.labels.tolist(), **config, "precision": amp_precision(loaded.device, amp),
           "code": code_hash(_train_both, _Towers, param_groups, adamw_groups, cma_loss, stream, training)}
    tensors, info, hit = distributed.cached_tensors(
        "cma", loaded.model_id, key,
        lambda: _train_both(loaded, dataset, workers=workers, progress=progress, **config), use_cache=use_cache)
    tuned = derive(loaded, "cma", weights=tensors, info={"cma": info["config"]})
    return FineTuned(tuned, info["config"], info["history"], hit)


def param_groups(named_parameters, weight_decay: float, decay: str) -> list[dict]:
    """AdamW's parameter groups for ``decay``: ``"all"``, one group with ``weight_decay`` (published: the optimiser
    of FLYP's code, which CMA's builds on); ``"matrices"``, :func:`helpers.torchtools.adamw_groups` (weight matrices
    decayed; biases, norms and embeddings not)."""
    named = list(named_parameters)
    if decay == "all":
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    if decay == "matrices":
        return adamw_groups(named, weight_decay)
    raise ValueError(f"decay={decay!r}: expected one of {DECAY}")


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
                weight_decay, decay, warmup, crop_scale, train_logit_scale, amp, seed, workers,
                progress) -> tuple[dict, dict]:
    """:func:`contrastive_finetune`'s objective and parameters, trained by :func:`helpers.training.fit`:
    ``({parameter name: trained tensor}, info)``."""
    n = len(dataset)
    if n < 2:
        raise ValueError(f"dataset {dataset.name!r} has {n} image(s); contrastive fine-tuning needs a batch of 2+")
    device = training.prepare(loaded.device)
    model = copy.deepcopy(loaded.model).to(device)
    model.logit_scale.requires_grad_(train_logit_scale)
    crop = stream.RandomResizedCrop(image_size(model.visual), scale=tuple(crop_scale), interpolation="bicubic")
    labels = torch.from_numpy(dataset.labels)
    tokens = loaded.tokenizer([prompt.format(c) for c in dataset.class_names]).to(device)
    images = stream.StreamedImages(dataset, crop, normalize_of(loaded.preprocess), seed=seed, workers=workers)

    def objective(towers, idx, ctx):
        start, stop = distributed.shard_bounds(len(idx))
        rows = idx[start:stop]  # this rank's slice of the global batch: only these images are read
        x = images(rows.tolist(), ctx.step).to(device)
        present, inverse = torch.unique(labels[rows].to(device), return_inverse=True)
        img, txt = towers(x, tokens[present])  # this rank's slice; then the embeddings of the global batch
        img, txt = distributed.all_gather_with_grad(img), distributed.all_gather_with_grad(txt[inverse])
        loss = cma_loss(model.logit_scale.exp().clamp(max=100) * img.float() @ txt.float().T, lam)
        return loss, {"image·own prompt": (img * txt).sum(1).mean()}

    batches = training.Batches(n, batch_size)
    total = epochs * batches.per_epoch
    trained = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    with images:
        run = training.fit(_Towers(model), param_groups(trained, weight_decay, decay), objective, batches,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=lr), epochs=epochs, device=device, amp=amp,
                           schedule=training.schedule_warmup_cosine(max(1, min(warmup, total // 10))), seed=seed,
                           desc=f"contrastive fine-tune (λ={lam})", progress=progress)
    tensors = {k: p.detach().cpu().clone() for k, p in model.named_parameters()}
    info = {"config": {"lam": lam, "prompt": prompt, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                       "weight_decay": weight_decay, "decay": decay, "warmup": warmup, "crop_scale": list(crop_scale),
                       "train_logit_scale": train_logit_scale, "amp": amp, "precision": run.precision, "seed": seed,
                       "steps": run.steps},
            "history": [{**h, "loss": round(h["loss"], 4), "image·own prompt": round(h["image·own prompt"], 4)}
                        for h in run.history]}
    return tensors, info


def with_miner(detectors: list, base: LoadedModel) -> list:
    """``detectors`` with ``mined_by`` = ``base``'s name for every NegLabel that does not name its miner: with
    ``mining="fixed"`` each fine-tuned model of an experiment re-encodes the words that the experiment's zero-shot
    model mined (CMA's one word list); with ``mining="own"`` the name is not used."""
    from ..detectors import get

    out = []
    for spec in detectors:
        d = get(spec)
        named = d.name == "neglabel" and d.params.get("mined_by") is None
        out.append({"name": d.name, **d.params, "mined_by": base.name} if named else spec)
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
    model (the base model), method, lam (NaN for zero-shot), seed, set, role and the measures. NegLabel with
    ``mining="fixed"`` keeps the list that ``bench``'s own (zero-shot) model mines (:func:`with_miner`)."""
    from ..evaluation import evaluate
    from ..gap import benchmark_gap

    detectors = with_miner(detectors, bench.model)
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
