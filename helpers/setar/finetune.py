r"""SeTAR+FT and the LoRA baseline: low-rank updates of the MLP up-projections, trained with SeTAR's objective.

SeTAR+FT (``X1AOX1A/SeTAR`` ``finetune.py`` with its modified LoRA in ``src/peft/.../modified_lora``): after the
search, every edited matrix $W' = W - B_0 A_0$ gets a trainable low-rank term initialised with exactly the
components the edit dropped, $B_0 = U_{minor} \Sigma_{minor}^{1/2}$, $A_0 = \Sigma_{minor}^{1/2} V_{minor}^\top$,
without LoRA's scaling, so training starts from the original weights: $W' + B_0 A_0 = W$. The LoRA baseline
(Hu et al., ICLR 2022) adds $\frac{\alpha}{r} B A$ to every ``mlp.c_fc`` of both towers, $B = 0$ and $A$
Kaiming-uniform at the start, r = 32. **Its α is 8, not the config's 16**: ``configs/finetune/.../LoRA.json`` says
``lora_alpha: 16``, but ``finetune.py`` builds ``ModifiedLoraConfig(r=args.lora_r, target_modules=...)`` without
passing ``lora_alpha``, so peft's ``LoraConfig`` default ``lora_alpha = 8`` applies (``huggingface/peft``
``src/peft/tuners/lora/config.py``) and the update is scaled by 8/32 = 0.25 (:func:`lora_factors`, ``alpha=8``;
``alpha=16`` gives the config's 0.5). Both are trained with the search objective
(:func:`helpers.setar.search.objective`): SGD, momentum 0.9, weight decay 5e-4, cosine schedule per step, lr 0.01,
batch 100, 5 epochs on the search split (published: SeTAR's 1,000 listed ImageNet train images,
:mod:`helpers.setar.split`). SeTAR+FT starts from the edit in its config's ``lora_settings``, which for B/16 is the
published edit (:data:`~helpers.setar.edit.PUBLISHED_B16`; :func:`setar_ft_start`). The trained update is merged
into the weights and the result is a derived model (:func:`helpers.models.derive`); trained weights are cached
by their configuration.

**Augmentation** (``augment=True``, published): the official training transform (``model_hub.py``,
``CLIP.train_preprocess``) is ``RandomResizedCrop(224, scale=(0.9, 1))`` bicubic, a random horizontal flip,
``ToTensor`` and CLIP's ``Normalize``. The images are then read from their files per batch
(:class:`helpers.data.stream.StreamedImages`), each cropped from the original image with randomness keyed by
``(seed, step, row)``. ``augment=False`` trains on the fixed centre crops of the model's evaluation preprocessing
(``split.images``), the package's earlier setting.

The updates are :mod:`torch.nn.utils.parametrize` parametrisations (``W ← W + s·B A``) registered on a derived
copy of the model, so the base model is never modified and no module is rewritten by hand.

Under ``torchrun`` the training is data-parallel (:mod:`helpers.distributed`): every rank draws the global batch,
reads (or, with ``augment=True``, decodes and crops) only its slice (:func:`helpers.distributed.shard_bounds`),
encodes it, and the global and local image features are gathered with their gradients, so the objective
(a cross-entropy plus LoCoOp's entropy averaged over the batch's OOD patches) is that of the global batch and the
step equals the single-process step up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .. import distributed
from .. import training as loop
from ..cache import code_hash
from ..data.stream import RandomResizedCrop, StreamedImages
from ..features import encode_images
from ..finetune.coop import locoop_entropy
from ..io import sha256_json
from ..models import LoadedModel, derive
from ..torchtools import frozen, image_size, normalize_of
from .edit import PUBLISHED_B16, TOWERS, n_blocks, param_name, setar_model, svd_of


class LowRankDelta(nn.Module):
    """The parametrisation ``W ↦ W + scale · B @ A`` (B (d_out, r), A (r, d_in) trainable)."""

    def __init__(self, b: torch.Tensor, a: torch.Tensor, scale: float):
        super().__init__()
        self.b, self.a, self.scale = nn.Parameter(b.float().clone()), nn.Parameter(a.float().clone()), scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.b @ self.a).to(w.dtype)


def setar_factors(loaded: LoadedModel, edit: dict, svds: dict | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """SeTAR+FT's start: for each edited matrix the dropped components as ``(B, A, scale=1)`` (``svds``:
    decompositions to reuse, ``{(tower, block): SVD}``)."""
    out = {}
    for (tower, block), ratio in edit.items():
        if ratio:
            b, a = ((svds or {}).get((tower, block)) or svd_of(loaded.model, tower, block)).minor(ratio)
            out[param_name(tower, block)] = (b, a, 1.0)
    return out


def setar_ft_start(loaded: LoadedModel, searched: dict, from_published: bool = False) -> tuple[dict, LoadedModel, dict]:
    """SeTAR+FT's starting point: ``(edit, edited model, factors)``. The edit is ``searched`` (this run's search),
    or with ``from_published`` the published ViT-B/16 edit that the official SeTAR+FT config lists as its
    ``lora_settings`` (:data:`~helpers.setar.edit.PUBLISHED_B16`; a model without 12 blocks per tower refuses it)."""
    edit = dict(PUBLISHED_B16) if from_published else dict(searched)
    if any(r and not 0 <= b < n_blocks(loaded.model, t) for (t, b), r in edit.items()):
        setar_model(loaded, edit)  # raises the error that names the blocks and the fix
    svds = {key: svd_of(loaded.model, *key) for key, ratio in edit.items() if ratio}  # once, for both
    return edit, setar_model(loaded, edit, svds), setar_factors(loaded, edit, svds)


def lora_factors(loaded: LoadedModel, r: int = 32, alpha: float = 8, seed: int = 0) -> dict:
    """LoRA's start on every ``mlp.c_fc`` of both towers: ``B = 0``, ``A`` Kaiming-uniform (``a = √5``, as LoRA),
    scale ``alpha / r``. ``alpha = 8`` is what the official code runs (peft's default; its config's 16 is never
    passed on, module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(loaded.model.named_parameters())
    out = {}
    for tower in TOWERS:
        for block in range(n_blocks(loaded.model, tower)):
            name = param_name(tower, block)
            d_out, d_in = params[name].shape
            bound = math.sqrt(6 / ((1 + 5) * d_in))  # kaiming_uniform_(a=sqrt(5)) with fan_in = d_in
            a = (torch.rand(r, d_in, generator=gen) * 2 - 1) * bound
            out[name] = (torch.zeros(d_out, r), a, alpha / r)
    return out


def with_updates(base: LoadedModel, factors: dict) -> tuple[nn.Module, list[nn.Parameter]]:
    """A structural copy of ``base``'s model (its tensors shared, not copied) with a :class:`LowRankDelta` on each
    named weight; the trainable factors."""
    model = derive(base, "trainable").model
    trainable = []
    for name, (b, a, scale) in factors.items():
        owner, _, attr = name.rpartition(".")
        delta = LowRankDelta(b, a, scale)
        parametrize.register_parametrization(model.get_submodule(owner), attr, delta)
        trainable += [delta.b, delta.a]
    return model, trainable


def merged(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """The current values of the parametrised weights ``names`` (base + update), detached."""
    return {n: getattr(model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]).detach().clone()
            for n in names}


class _Encoders(nn.Module):
    """The model's global and local image features (:func:`helpers.features.encode_images`) of images
    (B, 3, H, W) and its normalised text features of tokenised prompts (C, L): the module the loop trains."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[dict, torch.Tensor]:
        return (encode_images(self.model.visual, images, ("image", "local")),
                F.normalize(self.model.encode_text(tokens).float(), dim=-1))


CROP_SCALE = (0.9, 1.0)  # the official train_preprocess: RandomResizedCrop(224, scale=(0.9, 1)), bicubic, + flip


class TrainImages:
    """This rank's images of a training batch: ``images(idx, step)`` for the global batch of split rows ``idx``
    at step ``step``. With a ``stream`` (:class:`~helpers.data.stream.StreamedImages`, ``augment=True``) the rows
    of this rank's slice are read from their files, each randomly cropped and flipped as keyed by ``(seed, step,
    row)``, so a rank draws exactly the crops one process draws for those rows; without, the slice of the
    preprocessed tensor ``fixed`` (the centre crops)."""

    def __init__(self, fixed: torch.Tensor | None = None, stream: StreamedImages | None = None):
        if (fixed is None) == (stream is None):
            raise ValueError("give the preprocessed images or a stream of augmented ones, not both or neither")
        self.fixed, self.stream = fixed, stream

    def __call__(self, idx: torch.Tensor, step: int) -> torch.Tensor:
        start, stop = distributed.shard_bounds(len(idx))
        rows = idx[start:stop]
        if self.stream is None:
            return self.fixed[rows]
        return self.stream(rows.tolist(), step)


def train_images(base: LoadedModel, images: torch.Tensor | None, dataset=None, *, augment: bool = True,
                 crop_scale=CROP_SCALE, flip: bool = True, seed: int = 1, workers: int | None = None) -> TrainImages:
    """The training images of :func:`train_updates`: with ``augment`` the rows of ``dataset`` through the official
    random crop (``RandomResizedCrop(size, crop_scale)`` bicubic, ``flip``) and the model's ``Normalize``; else
    the preprocessed ``images``."""
    if not augment:
        if images is None:
            raise ValueError("augment=False trains on the preprocessed images: pass images (split.images)")
        return TrainImages(fixed=images)
    if dataset is None:
        raise ValueError("augment=True reads each training image from its file, randomly cropped as the official "
                         "code: pass dataset= (the split's ImageFolderDataset, split.dataset), or augment=False to "
                         "train on the fixed centre crops split.images")
    crop = RandomResizedCrop(image_size(base.model.visual), scale=tuple(crop_scale), flip=flip, interpolation="bicubic")
    return TrainImages(stream=StreamedImages(dataset, crop, normalize_of(base.preprocess), seed=seed,
                                             workers=workers))


def train_updates(base: LoadedModel, factors: dict, images: torch.Tensor | None, labels: torch.Tensor,
                  tokens: torch.Tensor, *, dataset=None, augment: bool = True, crop_scale=CROP_SCALE,
                  flip: bool = True, epochs: int = 5, batch_size: int = 100, lr: float = 0.01, momentum: float = 0.9,
                  weight_decay: float = 5e-4, lam: float = 0.1, top_k: int = 3, seed: int = 1,
                  scale: float | None = None, workers: int | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train the low-rank updates ``factors`` on ``base`` with the search objective; the merged weights and the
    training log (one row per epoch). ``augment`` (published): each batch read from ``dataset``'s files through
    the official random crop and flip (module docstring); ``False``: the preprocessed ``images``. ``workers``:
    threads that read a batch (no effect on the result)."""
    model, trainable = with_updates(base, factors)
    scale = scale or min(float(base.model.logit_scale.detach().exp()), 100.0)
    batch_images = train_images(base, images, dataset, augment=augment, crop_scale=crop_scale, flip=flip, seed=seed,
                                workers=workers)

    def objective(encoders, idx, ctx):
        f, text = encoders(batch_images(idx, ctx.step).to(ctx.device), tokens)  # this rank's slice
        f = {k: distributed.all_gather_with_grad(v) for k, v in f.items()}  # the global batch's features
        ce = F.cross_entropy(scale * f["image"] @ text.T, labels[idx])
        ent = locoop_entropy(scale * f["local"] @ text.T, labels[idx], top_k)
        return ce - lam * ent, {"ce": ce, "entropy": ent}

    try:
        with frozen(model, trainable):  # gradients for the updates only; the shared base's flags come back after
            run = loop.fit(_Encoders(model), trainable, objective,
                           loop.Batches(len(labels), batch_size, keep_last=True),
                           optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay),
                           schedule=loop.schedule_cosine, epochs=epochs, device=base.device, seed=seed,
                           train_mode=False)  # no dropout; the updates still train
    finally:
        if batch_images.stream is not None:
            batch_images.stream.close()
    return merged(model, list(factors)), run.history


def finetuned_model(base: LoadedModel, parent: LoadedModel, factors: dict, tag: str, images, labels, tokens,
                    use_cache: bool = True, *, dataset=None, augment: bool = True, crop_scale=CROP_SCALE,
                    flip: bool = True, workers: int | None = None, **train) -> tuple[LoadedModel, list[dict]]:
    """:func:`train_updates` on ``base`` (the SeTAR-edited model, or the plain model for LoRA), cached by the
    base, the starting factors, the data (with ``augment``: ``dataset``'s file list and bytes) and the settings;
    the result derived from ``parent`` (the unedited model), so its id names the merged weights."""
    if augment:
        if dataset is None:
            train_images(base, images, None, augment=True)  # the error naming the fix
        data = {"files": dataset.content_fingerprint(), "labels": sha256_json(labels.tolist()),
                "tokens": sha256_json(tokens.tolist()), "crop_scale": list(crop_scale), "flip": flip}
    else:
        data = sha256_json([images.shape, float(images.double().sum()), labels.tolist(), tokens.tolist()])
    key = {"base": base.model_id, "factors": {n: sha256_json(np.round(torch.cat([b.flatten(), a.flatten()]).double()
                                                                      .numpy(), 8).tolist()) + f"x{s}"
                                              for n, (b, a, s) in factors.items()},
           "data": data, "augment": augment, **train,
           "code": code_hash(train_updates, train_images, TrainImages, StreamedImages, RandomResizedCrop, _Encoders,
                             with_updates, LowRankDelta, merged, locoop_entropy, loop)}

    def build():
        weights, log = train_updates(base, factors, images, labels, tokens, dataset=dataset, augment=augment,
                                     crop_scale=crop_scale, flip=flip, workers=workers, **train)
        return weights, {"log": log}

    weights, info, _ = distributed.cached_tensors("setar", f"{tag}-{base.model_id}", key, build,
                                                  use_cache=use_cache)
    return derive(parent, tag, weights=dict(weights), info={tag: {**train, "augment": augment}}), info["log"]
