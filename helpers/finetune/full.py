r"""Full fine-tuning of CLIP's image tower with a classification head initialised from the class prompts.

Model. With $\hat f_\theta(x)$ the normalised image embedding (after the visual projection) and
$\hat t_k$ the normalised text embeddings of the class prompts,

.. math::

    z(x) = W \hat f_\theta(x) + b, \qquad W^{(0)} = \tau\, [\hat t_1, \dots, \hat t_C]^\top, \quad b^{(0)} = 0,

so that before the first step $z$ equals CLIP's zero-shot logits at its own scale $\tau = e^{\text{logit\_scale}}$
(the "zero-shot head" of WiSE-FT, Wortsman et al., CVPR 2022, ``mlfoundations/wise-ft``
``src/models/zeroshot.py``; LP-FT, Kumar et al., ICLR 2022, argue that a good head distorts features less).
Every image-tower weight $\theta$ and the head $(W, b)$ train with cross-entropy; the text tower does not move.

Scores (higher = more ID): MSP and energy on $z$ at $T = 1$, as PLP scores probe logits
(the ``head`` detector of :mod:`helpers.detectors`), and MCM at $T = 1$ on
$\cos(\hat f_\theta(x), \hat t_k)$ against the *frozen* text embeddings (Ming & Li, IJCV 2023), i.e. the
fine-tuned image tower read as a CLIP again.

Published baseline (PLP, Adaloglou et al., TMLR 2024, ``HHU-MMBS/plp-official-tmlr2024`` ``finetune.py`` and
``fine_tune.sh``; defaults here): AdamW, ``weight_decay`` 0.05 (not on biases, norms and embeddings), peak ``lr``
5e-4 · batch/512 with their batch 64 × 4 GPUs = 2.5e-4, ``epochs`` 100 with 5 warm-up epochs (``warmup`` = 0.05
of the steps), cosine decay, ``label_smoothing`` 0.1, ``mixup`` α = 0.8 and ``cutmix`` α = 1.0 (one of the two
per batch, with probability 0.5 each), ``batch_size`` 256. Their training images get the evaluation transform
(no RandAugment), so ``augment`` is off by default. Their head is random (truncated normal, std 0.02):
``head_init="random"``; the text-initialised head (``"text"``, default here) is what this series compares.

Deviations: warm-up and cosine are per step and decay to 0 (PLP: per epoch, from 1e-6 to a floor of 1e-5 with
10 cool-down epochs); no model EMA and no repeated augmentation. Training images are decoded once into memory
with open_clip's bicubic resize and centre crop (:func:`helpers.data.arrays.decoded_images`), which equals the
model's own preprocessing for bicubic models.

Under ``torchrun`` the training is data-parallel (:mod:`helpers.distributed`): every rank draws the global batch,
its augmentation and mixing as one process would, encodes its slice, and the logits are gathered with their
gradients, so the step equals the single-process step (up to float rounding); ``batch_size`` stays the global batch.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, training
from ..cache import code_hash
from ..data import ImageFolderDataset
from ..data.arrays import decoded_images
from ..io import sha256_json
from ..models import LoadedModel, derive
from ..torchtools import adamw_groups, image_size, normalize_of


class ZeroShotHead(nn.Module):
    """``z = W x̂ + b`` on normalised image embeddings (B, D); ``W`` (C, D) = ``scale`` · ``text`` at
    initialisation (``init="text"``) or truncated-normal with std 0.02 (``init="random"``, PLP); ``b`` = 0."""

    def __init__(self, text: torch.Tensor, scale: float, init: str = "text", generator=None):
        super().__init__()
        c, d = text.shape
        if init == "text":
            weight = scale * text.float().clone()
        elif init == "random":
            weight = torch.empty(c, d)
            nn.init.trunc_normal_(weight, std=0.02, generator=generator)
        else:
            raise ValueError(f"head init must be 'text' or 'random', not {init!r}")
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), self.weight, self.bias)


@dataclass
class FineTuned:
    """A fine-tuned image tower as a derived model (``loaded``, :func:`helpers.models.derive`: its id names the
    base model and a hash of the new weights, so its features are cached like any model's, and it carries the
    head, which the ``"head"`` detector scores), the training configuration and log."""

    loaded: LoadedModel
    config: dict
    history: list[dict] = field(default_factory=list)
    from_cache: bool = False


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, rng: np.random.Generator, *, mixup: float,
              cutmix: float, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch-mode Mixup/CutMix: images (B, 3, H, W) mixed with the reversed batch, soft targets (B, C) with
    label smoothing. With both α > 0 a coin (p = 0.5) picks CutMix; λ ~ Beta(α, α); CutMix's λ is corrected to
    the pasted box's area."""
    off = smoothing / num_classes
    onehot = F.one_hot(y, num_classes).float() * (1 - smoothing) + off
    use_cut = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cut else mixup
    if alpha <= 0:
        return x, onehot
    lam = float(rng.beta(alpha, alpha))
    if use_cut:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
        x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x.flip(0)
    return x, lam * onehot + (1 - lam) * onehot.flip(0)


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and horizontal flip of uint8 images (B, H, W, 3)."""
    b, h, w, _ = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    return torch.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


class _Classifier(nn.Module):
    """The image tower followed by the head: ``head(visual(x))`` (B, C), the module the loop trains (its state:
    ``visual.*``, ``head.weight``, ``head.bias``)."""

    def __init__(self, visual: nn.Module, head: ZeroShotHead):
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x).float()).float()


def finetune_image_tower(loaded: LoadedModel, dataset: ImageFolderDataset, text: np.ndarray, *,
                         epochs: int = 100, batch_size: int = 256, lr: float = 2.5e-4, weight_decay: float = 0.05,
                         warmup: float = 0.05, label_smoothing: float = 0.1, mixup: float = 0.8, cutmix: float = 1.0,
                         augment: bool = False, head_init: str = "text", amp: bool = False, seed: int = 42,
                         progress: bool = False, use_cache: bool = True) -> FineTuned:
    """Fine-tune a copy of ``loaded``'s image tower and a head on ``dataset`` (labels into the C classes of
    ``text`` (C, D), the normalised class-prompt embeddings); see the module docstring. ``loaded`` is unchanged.

    An epoch is ``N // batch_size`` batches (one batch of all images when ``N < batch_size``). ``seed`` fixes the
    batch order, mixing, augmentation and a random head. ``amp`` trains under bf16 (CPU) / fp16 (CUDA) autocast.
    The trained tower and head are cached, keyed by the base model, the images, ``text``, every argument and the
    training code; a cached run is loaded instead of trained again.
    """
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "warmup": warmup,
              "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix, "augment": augment,
              "head_init": head_init, "amp": amp, "seed": seed}
    key = {"model": loaded.model_id, "images": dataset.content_fingerprint(), "labels": sha256_json(dataset.labels.tolist()),
           "text": sha256_json(np.asarray(text, np.float32).round(6).tolist()), **config,
           "code": code_hash(_train_tower, _Classifier, ZeroShotHead, _MixState, mix_batch, _augment,
                                     decoded_images, training)}
    tensors, info, hit = distributed.cached_tensors(
        "finetune", loaded.model_id, key,
        lambda: _train_tower(loaded, dataset, text, progress=progress, **config), use_cache=use_cache)
    visual = copy.deepcopy(loaded.model.visual)
    visual.load_state_dict({k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")})
    visual.eval()
    ft = derive(loaded, "ft", modules={"visual": visual.to(loaded.device)},
                head=(tensors["head.weight"].numpy(), tensors["head.bias"].numpy()), info={"finetune": info["config"]})
    return FineTuned(ft, info["config"], info["history"], hit)


class _MixState:
    """The numpy generator that draws Mixup/CutMix, kept by a checkpoint of the run."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])


def _train_tower(loaded: LoadedModel, dataset: ImageFolderDataset, text: np.ndarray, *, epochs: int, batch_size: int,
                 lr: float, weight_decay: float, warmup: float, label_smoothing: float, mixup: float, cutmix: float,
                 augment: bool, head_init: str, amp: bool, seed: int, progress: bool) -> tuple[dict, dict]:
    """:func:`finetune_image_tower`'s objective and parameters, trained by :func:`helpers.training.fit`:
    ``({"visual.*", "head.weight", "head.bias"}, info)``."""
    text_t = torch.as_tensor(np.asarray(text, np.float32))
    labels = dataset.labels
    n, c = len(labels), len(text_t)
    if n == 0:
        raise ValueError(f"dataset {dataset.name!r} is empty")
    if labels.max() >= c:
        raise ValueError(f"dataset {dataset.name!r} has labels up to {labels.max()} but text has {c} classes")
    device = training.prepare(loaded.device)
    visual = copy.deepcopy(loaded.model.visual)
    gen = torch.Generator().manual_seed(seed)
    mix = _MixState(seed)
    scale = min(float(loaded.model.logit_scale.detach().exp()), 100.0)
    classifier = _Classifier(visual, ZeroShotHead(text_t, scale, head_init, generator=gen)).to(device)
    norm = normalize_of(loaded.preprocess)
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    with distributed.main_first():  # one rank decodes into the cache, the others read it
        x_all = torch.from_numpy(decoded_images(dataset, image_size(visual), progress=progress))
    y_all = torch.from_numpy(labels)

    def objective(model, idx, ctx):
        xb = _augment(x_all[idx], ctx.gen) if augment else x_all[idx]
        xb = (xb.to(device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        yb = y_all[idx].to(device)
        xb, target = mix_batch(xb, yb, c, mix.rng, mixup=mixup, cutmix=cutmix, smoothing=label_smoothing)
        logits = distributed.all_gather_with_grad(model(distributed.shard(xb)))  # the global batch's logits
        loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
        return loss, {"train_acc": (logits.argmax(1) == yb).float().mean()}

    batches = training.Batches(n, batch_size)
    total = epochs * batches.per_epoch
    run = training.fit(classifier, adamw_groups(classifier.named_parameters(), weight_decay), objective, batches,
                    optimizer=lambda p: torch.optim.AdamW(p, lr=lr), epochs=epochs, device=device, amp=amp,
                    schedule=training.schedule_warmup_cosine(max(1, int(round(warmup * total)))), seed=seed,
                    generator=gen, extra_state=[mix], desc="fine-tune", progress=progress)
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "warmup": warmup,
              "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix, "augment": augment,
              "head_init": head_init, "amp": amp, "seed": seed, "train_images": n, "steps": run.steps,
              "logit_scale": scale}
    return {k: v.detach().cpu() for k, v in classifier.state_dict().items()}, {"config": config,
                                                                              "history": run.history}


def weight_change(before: nn.Module, after: nn.Module) -> pd.DataFrame:
    """Relative change ``‖θ_after − θ_before‖ / ‖θ_before‖`` of every parameter tensor of two copies of a module,
    with its ``group`` (the block it belongs to, e.g. ``transformer.resblocks.3``, ``conv1``, ``proj``)."""
    old = dict(before.named_parameters())
    rows = []
    for name, p in after.named_parameters():
        q = old[name].detach().float()
        delta = float((p.detach().float() - q).norm() / q.norm().clamp_min(1e-12))
        parts = name.split(".")
        group = ".".join(parts[:3]) if parts[0] == "transformer" else parts[0]
        rows.append({"parameter": name, "group": group, "numel": p.numel(), "relative_change": delta})
    df = pd.DataFrame(rows)
    # input-to-output order for a ViT (named_parameters follows registration order, not the forward pass)
    first = {g: i for i, g in enumerate(("conv1", "class_embedding", "positional_embedding", "ln_pre"))}
    last = {g: i for i, g in enumerate(("ln_post", "proj"))}

    def depth(g: str) -> tuple[int, int]:
        if g in first:
            return 0, first[g]
        if g.startswith("transformer.resblocks."):
            return 1, int(g.rsplit(".", 1)[1])
        return (2, last[g]) if g in last else (3, 0)

    order = sorted(dict.fromkeys(df.group), key=depth)
    return df.sort_values("group", key=lambda s: s.map(order.index), kind="stable").reset_index(drop=True)


def weight_change_by_block(before: nn.Module, after: nn.Module) -> pd.DataFrame:
    """:func:`weight_change` per ``group`` (block): the root mean square of the parameters' relative changes,
    weighted by their sizes, ``sqrt(Σ numel · change² / Σ numel)``; rows in input-to-output order."""
    df = weight_change(before, after)
    g = df.assign(w=df.numel * df.relative_change ** 2).groupby("group", sort=False)
    return pd.DataFrame({"group": list(g.groups), "relative change": np.sqrt(g.w.sum() / g.numel.sum()).values})
