r"""Prompt learning: CoOp's learnable context vectors, with LoCoOp's OOD-patch entropy term as an option.

**CoOp** (Zhou, Yang, Loy, Liu, *Learning to Prompt for Vision-Language Models*, IJCV 2022; reference code
``KaiyangZhou/CoOp`` ``trainers/coop.py``, optimiser and schedule in ``configs/trainers/CoOp/vit_b16_ep50.yaml``
and Dassl's ``dassl/optim/lr_scheduler.py``). The words of a hand-written prompt are replaced by $M$ vectors
$v_1..v_M$ in the word-embedding space, shared by all classes ("unified context"), the class name at the end:

.. math::

    t_k = [\mathrm{SOS}]\, v_1 \dots v_M\, [\mathrm{CLASS}_k]\, .\, [\mathrm{EOS}], \qquad
    \hat g_k = \frac{g(t_k)}{\lVert g(t_k) \rVert}, \qquad
    p(y = k \mid x) = \frac{e^{\tau \cos(\hat x, \hat g_k)}}{\sum_j e^{\tau \cos(\hat x, \hat g_j)}},

with $g$ CLIP's frozen text transformer, $\hat x$ the frozen image embedding and $\tau = e^{\text{logit\_scale}}$
(100 for CLIP). The loss is cross-entropy; only $v$ moves.

**LoCoOp** (Miyai, Yu, Irie, Aizawa, *LoCoOp: Few-Shot Out-of-Distribution Detection via Prompt Learning*,
NeurIPS 2023; ``AtsuMiyai/LoCoOp`` ``trainers/locoop.py``). Local features $\hat l_p$ (GL-MCM's value-path
patch embeddings, :mod:`helpers.features`) of an image of class $y$ whose top-$K$ classes under
$\mathrm{softmax}(\tau \cos(\hat l_p, \hat g))$ exclude $y$ are treated as OOD patches; their entropy is pushed up:

.. math::

    \mathcal L = \mathrm{CE} - \lambda \cdot \operatorname{mean}_{p \in \text{OOD}}
    H\big(\mathrm{softmax}(\tau \cos(\hat l_p, \hat g))\big) .

$\lambda = 0$ is CoOp. **Scoring** (Ming & Li, *How Does Fine-Tuning Impact Out-of-Distribution Detection for
Vision-Language Models?*, IJCV 2023): MCM at $T = 1$ on $\cos(\hat x, \hat g_k)$, i.e.
the ``mcm`` detector of :mod:`helpers.detectors` on the derived model whose class prompts are the learned ones
(:func:`coop_model`), the same code as the zero-shot notebook.

Hyper-parameters (published default): ``n_ctx`` 16; ``ctx_init`` none, vectors drawn from
$\mathcal N(0, 0.02^2)$ (``ctx_init="a photo of a"`` starts from those words' embeddings instead); class token at
the end; SGD, ``lr`` 0.002, ``momentum`` 0.9, ``weight_decay`` 5e-4 (Dassl defaults); ``batch_size`` 32;
``epochs`` 50 (ImageNet, 1 and 16 shots); cosine schedule stepped per epoch after ``warmup_epochs`` = 1 epoch at
the constant ``warmup_lr`` 1e-5; LoCoOp ``lam`` 0.25 and ``top_k`` 200 (of ImageNet's 1000 classes).

Deviations: training reads cached image (and local) features, which is exact because the image tower is
frozen, but it means no data augmentation (CoOp uses random resized crops and flips). $\tau$ is CLIP's own
logit scale, capped at 100 as CLIP's training caps it (the pocket CLIP's scale is learned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from .. import training
from ..cache import cached_tensors, code_hash
from ..models import LoadedModel, derive
from ..torchtools import frozen

TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")


def _check_text_tower(model: nn.Module) -> None:
    missing = [a for a in TEXT_TOWER if not hasattr(model, a)]
    if missing:
        raise NotImplementedError(
            f"CoOp needs an open_clip CLIP whose text tower is built in (attributes {TEXT_TOWER}); "
            f"{type(model).__name__} lacks {missing}. Models with a separate text module (CustomTextCLIP, e.g. "
            f"SigLIP or HF text towers) are not supported.")


def encode_token_embeddings(model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Text features (C, D) of word-embedding sequences ``embeddings`` (C, L, W); ``tokens`` (C, L) are the token
    ids the sequences stand for (they locate the [EOS] position that is pooled).

    The same steps as open_clip's ``CLIP.encode_text`` after its ``token_embedding`` lookup, on the sequences cut
    after the last [EOS]: with CLIP's causal mask and [EOS] pooling no output depends on the padding behind it,
    so this is the same result for a fraction of the work (CoOp runs the text tower at every step).
    """
    cast = model.transformer.get_cast_dtype()
    mask = model.attn_mask
    causal = mask is not None and bool(torch.isinf(mask).equal(torch.ones_like(mask, dtype=torch.bool).triu(1)))
    if causal and model.text_pool_type == "argmax":
        n = int(tokens.argmax(-1).max()) + 1
        embeddings, tokens, mask = embeddings[:, :n], tokens[:, :n], mask[:n, :n]
    x = embeddings.to(cast) + model.positional_embedding[:embeddings.shape[1]].to(cast)
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class PromptLearner(nn.Module):
    """The prompts ``[SOS] ctx_1..ctx_M <class name> . [EOS]`` as word-embedding sequences (C, L, W).

    ``ctx`` (M, W) is the only parameter; the embeddings of [SOS], the class names, "." and [EOS] are frozen
    buffers (``prefix`` (C, 1, W), ``suffix`` (C, L-1-M, W)); ``tokens`` (C, L) are the ids of the placeholder
    prompt ``"X X .. X <name>."`` (or ``"<ctx_init> <name>."``), whose [EOS] position the text tower pools.
    """

    def __init__(self, model: nn.Module, tokenizer, class_names: list[str], *, n_ctx: int = 16,
                 ctx_init: str | None = None, init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        _check_text_tower(model)
        emb = model.token_embedding
        width = emb.weight.shape[1]
        if ctx_init:
            ids = tokenizer([ctx_init]).to(emb.weight.device)
            n_ctx = int((ids[0] != 0).sum()) - 2  # minus [SOS] and [EOS]
            with torch.no_grad():
                ctx = emb(ids)[0, 1:1 + n_ctx].float().cpu().clone()
            lead = ctx_init
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be at least 1, not {n_ctx}")
            ctx = torch.randn(n_ctx, width, generator=generator) * init_std
            lead = " ".join(["X"] * n_ctx)
        prompts = [f"{lead} {name}." for name in class_names]
        limit = getattr(tokenizer, "context_length", None)
        if limit is not None and hasattr(tokenizer, "encode"):
            long = [p for p in prompts if len(tokenizer.encode(p)) + 2 > limit]
            if long:
                raise ValueError(f"{len(long)} prompt(s) exceed the text tower's {limit} tokens, e.g. {long[0]!r}. "
                                 f"Fix: fewer context tokens (n_ctx={n_ctx}) or shorter class names.")
        tokens = tokenizer(prompts).to(emb.weight.device)
        if not ctx_init and not (tokens[:, 1:1 + n_ctx] == tokens[0, 1]).all():
            raise ValueError("the placeholder 'X' does not tokenize to one token per context vector; "
                             "this tokenizer is not CLIP's BPE tokenizer")
        with torch.no_grad():
            full = emb(tokens).float()
        self.ctx = nn.Parameter(ctx.to(full.device))
        self.register_buffer("prefix", full[:, :1].clone())
        self.register_buffer("suffix", full[:, 1 + n_ctx:].clone())
        self.register_buffer("tokens", tokens)
        self.n_ctx = n_ctx
        self.class_names = list(class_names)

    def forward(self) -> torch.Tensor:
        ctx = self.ctx.unsqueeze(0).expand(len(self.class_names), -1, -1)
        return torch.cat([self.prefix, ctx, self.suffix], dim=1)


def coop_lr(epoch: int, *, epochs: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate of ``epoch`` (0-based) under Dassl's ``cosine`` schedule with constant warm-up
    (``WARMUP_RECOUNT=True``): ``warmup_lr`` for the first ``warmup_epochs``, then
    ``lr/2 · (1 + cos(π (epoch - warmup_epochs) / epochs))``."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def locoop_entropy(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean entropy of the OOD patches: ``local_logits`` (B, P, C), ``labels`` (B,). A patch is OOD when ``labels``
    is not among its ``top_k`` classes. Returns 0 when no patch is OOD (LoCoOp's ``entropy_select_topk``)."""
    b, p, c = local_logits.shape
    prob = local_logits.reshape(b * p, c).softmax(-1)
    top = prob.topk(top_k, dim=1).indices
    ood = ~(top == labels.repeat_interleave(p).unsqueeze(1)).any(1)
    if not ood.any():
        return local_logits.new_zeros(())
    sel = prob[ood]
    return -(sel * torch.log(sel + 1e-5)).sum(1).mean()  # 1e-5 as in the reference code


@dataclass
class CoOpPrompts:
    """Learned prompts: context vectors ``ctx`` (M, W), normalised text features ``text`` (C, D) of the classes."""

    ctx: np.ndarray
    text: np.ndarray
    class_names: list[str]
    config: dict
    history: list[dict] = field(default_factory=list)

    @property
    def n_ctx(self) -> int:
        return len(self.ctx)


def _check_inputs(image: np.ndarray, labels: np.ndarray, c: int, local, lam: float, top_k: int) -> None:
    """``ValueError`` naming the fix when :func:`train_coop`'s features, labels or LoCoOp settings do not fit."""
    n = len(labels)
    if len(image) != n:
        raise ValueError(f"{len(image)} image features but {n} labels")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}) for {c} class names; found {labels.min()}..{labels.max()}")
    if lam > 0:
        if local is None:
            raise ValueError("lam > 0 (LoCoOp) needs the local features: pass local=features.local "
                             "(extract them with kinds=('image', 'local')).")
        if len(local) != n:
            raise ValueError(f"{len(local)} local feature rows but {n} labels")
        if not 0 < top_k < c:
            raise ValueError(f"top_k={top_k} must lie in [1, {c - 1}] for {c} classes: with top_k >= {c} no patch "
                             f"is ever OOD. LoCoOp uses 200 of ImageNet's 1000 classes (20%); for {c} classes "
                             f"try top_k={max(1, round(0.2 * c))}.")


def train_coop(loaded: LoadedModel, image: np.ndarray, labels: np.ndarray, class_names: list[str], *,
               local: np.ndarray | None = None, n_ctx: int = 16, ctx_init: str | None = None, epochs: int = 50,
               batch_size: int = 32, lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4,
               warmup_epochs: int = 1, warmup_lr: float = 1e-5, lam: float = 0.0, top_k: int = 200,
               logit_scale: float | None = None, seed: int = 1, progress: bool = False) -> CoOpPrompts:
    """Learn CoOp's context vectors (LoCoOp's when ``lam > 0``) on cached features; see the module docstring.

    ``image`` (N, D): normalised image embeddings of the training images, ``labels`` (N,) into ``class_names``;
    ``local`` (N, P, D): their normalised local features (needed when ``lam > 0``). ``logit_scale``: the
    temperature inverse $\\tau$; None takes the model's ``exp(logit_scale)`` capped at 100. ``seed`` fixes the
    context initialisation and the batch order. An epoch is ``N // batch_size`` batches (one batch of all
    images when ``N < batch_size``), as Dassl's loader with ``drop_last``.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    n = len(labels)
    _check_inputs(image, labels, len(class_names), local, lam, top_k)
    model = loaded.model
    gen = torch.Generator().manual_seed(seed)
    learner = PromptLearner(model, loaded.tokenizer, class_names, n_ctx=n_ctx, ctx_init=ctx_init, generator=gen)
    device = training.prepare(loaded.device)
    learner.to(device)
    if logit_scale is None:
        logit_scale = min(float(model.logit_scale.detach().exp()), 100.0)
    x_all = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    y_all = torch.from_numpy(labels.astype(np.int64))

    def objective(prompts, idx, ctx):
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        text = F.normalize(encode_token_embeddings(model, prompts(), learner.tokens).float(), dim=-1)
        logits = logit_scale * x @ text.T
        ce = F.cross_entropy(logits, y)
        ent = torch.zeros((), device=device)
        if lam > 0:
            loc = torch.from_numpy(np.asarray(local[idx.numpy()], dtype=np.float32)).to(device)
            ent = locoop_entropy(logit_scale * loc @ text.T, y, top_k)
        return ce - lam * ent, {"ce": ce, "entropy": ent, "train_acc": (logits.argmax(1) == y).float().mean()}

    batches = training.Batches(n, batch_size)
    per_epoch = batches.per_epoch
    model.eval()
    with frozen(model):  # no .grad left on the shared model
        run = training.fit(learner, [learner.ctx], objective, batches,
                        # lr 1: the schedule's factor is Dassl's learning rate of the step's epoch itself
                        optimizer=lambda p: torch.optim.SGD(p, lr=1.0, momentum=momentum, weight_decay=weight_decay),
                        schedule=lambda s, total: coop_lr(s // per_epoch, epochs=epochs, lr=lr,
                                                          warmup_epochs=warmup_epochs, warmup_lr=warmup_lr),
                        epochs=epochs, device=device, seed=seed, generator=gen,
                        desc="CoOp" if lam == 0 else "LoCoOp", progress=progress)
        with torch.no_grad():
            text = F.normalize(encode_token_embeddings(model, learner(), learner.tokens).float(), dim=-1)
    config = {"n_ctx": learner.n_ctx, "ctx_init": ctx_init, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "momentum": momentum, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
              "warmup_lr": warmup_lr, "lam": lam, "top_k": top_k, "logit_scale": logit_scale, "seed": seed,
              "train_images": n}
    history = [{"epoch": h["epoch"], "lr": h["lr"], **{k: h[k] for k in ("loss", "ce", "entropy", "train_acc")}}
               for h in run.history]
    return CoOpPrompts(learner.ctx.detach().cpu().numpy().copy(), text.cpu().numpy(), list(class_names), config,
                       history)


def coop_model(loaded: LoadedModel, train, class_names: list[str], *, use_cache: bool = True, **kwargs
               ) -> tuple[LoadedModel, CoOpPrompts]:
    """CoOp/LoCoOp (:func:`train_coop`, ``kwargs`` its hyper-parameters) on the cached training features ``train``
    (:class:`helpers.features.Features`: ``image``, and ``local`` when ``lam > 0``), cached by the model, the
    features, the hyper-parameters and the code. Returns the derived model whose class prompts are the learned
    ones (:func:`helpers.models.derive` with ``class_text``; its image features are the parent's) and the prompts."""
    from ..detectors.probe import features_id

    lam = kwargs.get("lam", 0.0)
    key = {"model": loaded.model_id, "train": features_id(train), "classes": list(class_names), **kwargs,
           "code": code_hash(train_coop, PromptLearner, encode_token_embeddings, locoop_entropy, coop_lr, training)}

    def build():
        p = train_coop(loaded, train.image, train.labels, class_names, local=train.local if lam > 0 else None,
                       **kwargs)
        return {"ctx": p.ctx, "text": p.text}, {"config": p.config, "history": p.history}

    t, info, _ = cached_tensors("coop", loaded.model_id, key, build, use_cache=use_cache)
    prompts = CoOpPrompts(t["ctx"].numpy(), t["text"].numpy(), list(class_names), info["config"], info["history"])
    tag = "locoop" if lam > 0 else "coop"
    return derive(loaded, tag, class_text=(list(class_names), prompts.text), info={tag: info["config"]}), prompts
