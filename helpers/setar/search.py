r"""SeTAR's greedy search, as published and fast, with identical choices.

**Objective** (SeTAR's ``loss.py``, LoCoOp's loss): on a search split of labelled ID images, with
$\tau = e^{\text{logit\_scale}}$ (100 for CLIP) and the class-prompt embeddings $\hat t$,

.. math::

    \mathcal L = \mathrm{CE}\big(\tau \cos(\hat x, \hat t), y\big)
        - \lambda \cdot \operatorname{mean}_{p \in \text{OOD}} H\big(\mathrm{softmax}(\tau \cos(\hat l_p, \hat t))\big),

where a patch $p$ is OOD when its top-$K$ classes exclude $y$ (:func:`helpers.finetune.locoop_entropy`). Published
for B/16: $\lambda = 0.1$, $K = 300$ of ImageNet's 1,000 classes; with 10 classes we scale $K$ to 3.

**Per batch, as published.** The official search (``model_hub.py``, ``CLIP.compute_metrics_loss``) evaluates the
split in batches of 512 (``SeTAR.json``: ``batch_size`` 512; the loader does not shuffle), computes the loss of
each batch $b$ (its CE and the mean entropy of *its* OOD patches), repeats it once per image of the batch and
averages: $\mathcal L = \sum_b n_b \mathcal L_b / N$, the image-weighted mean of the per-batch losses. The CE part
is the split's mean CE whatever the batches; the entropy part is not (a batch with few OOD patches weighs as
much as its images). :func:`objective` does the same with ``batch_size`` (default :data:`SEARCH_BATCH` = 512,
consecutive rows of the split in its order); a split of at most ``batch_size`` images is one batch, and
``batch_size=None`` averages over the whole split at once.

**Greedy search** (``searchers.py``, ``VisualTextSearch``): visit the image tower's blocks top-down, then the text
tower's; at each block try every ratio of the grid on top of the ratios already accepted and keep the one that
lowers the objective below the running best (else 0).

**The naive search** (:func:`naive_search`) does what the reference code does: for every candidate it builds the
edited model (recomputing the SVDs) and runs both towers on the whole split. **The fast search**
(:func:`fast_search`) gives the same choices with less work: each SVD is computed once; the image blocks are
visited top-down while the blocks below stay unedited, so the input of every block is computed once and each
candidate re-runs only the block under edit and those above it; the text tower is fixed during the image phase
(and the image features during the text phase), so each candidate runs one tower only. The ``benchmarks/``
script checks that both searches choose the same ratios and measures the speed-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from ..features import encode_images, value_path
from ..finetune.coop import locoop_entropy
from .edit import RATIOS, TOWERS, n_blocks, param_name, setar_model, svd_of

SEARCH_BATCH = 512  # the official search's batch size (configs/training_free/.../SeTAR.json)


def _batch_objective(image, local, text, labels, scale, lam, top_k) -> tuple[float, float, float]:
    ce = F.cross_entropy(scale * image @ text.T, labels)
    ent = locoop_entropy(scale * local @ text.T, labels, top_k)
    return float(ce - lam * ent), float(ce), float(ent)


def objective(image: torch.Tensor, local: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, *,
              scale: float, lam: float, top_k: int, batch_size: int | None = SEARCH_BATCH) -> tuple[float, float, float]:
    """``(loss, CE, OOD-patch entropy)`` of normalised global (N, D) and local (N, P, D) image features against
    normalised class texts (C, D): each the image-weighted mean over consecutive batches of ``batch_size`` rows of
    the batch's value, as the official search averages (module docstring); ``None``: one batch of all rows."""
    n = len(labels)
    if batch_size is None or batch_size >= n:
        return _batch_objective(image, local, text, labels, scale, lam, top_k)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (or None: the whole split), not {batch_size}")
    total = [0.0, 0.0, 0.0]
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        values = _batch_objective(image[a:b], local[a:b], text, labels[a:b], scale, lam, top_k)
        total = [t + (b - a) * v for t, v in zip(total, values)]
    return total[0] / n, total[1] / n, total[2] / n


@dataclass
class SearchSplit:
    """The search images, preprocessed (N, 3, H, W), their labels (N,) and the tokenised class prompts (C, L);
    ``dataset``: the :class:`~helpers.data.ImageFolderDataset` they come from, row for row (SeTAR+FT and LoRA
    read their augmented training images from its files)."""

    images: torch.Tensor
    labels: torch.Tensor
    tokens: torch.Tensor
    dataset: object = None


LOG_COLUMNS = ["step", "tower", "block", "ratio", "loss", "ce", "entropy", "better", "accepted"]


@dataclass
class SearchResult:
    edit: dict  # {(tower, block): ratio}, only the accepted non-zero ratios
    log: pd.DataFrame  # one row per candidate: step, tower, block, ratio, loss, ce, entropy, best, accepted
    seconds: float
    settings: dict = field(default_factory=dict)


def _order(model) -> list[tuple[str, int]]:
    return [(t, b) for t in TOWERS for b in reversed(range(n_blocks(model, t)))]


def _text(model, tokens) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


class _Record:
    """The running best and the candidate log shared by both searches."""

    def __init__(self):
        self.rows, self.best, self.edit = [], np.inf, {}

    def consider(self, step, tower, block, ratio, values) -> None:
        margin = 1e-9 * abs(self.best) if np.isfinite(self.best) else 0.0  # "lower", not float noise of another path
        better = values[0] < self.best - margin
        if better:
            self.best = values[0]
        self.rows.append({"step": step, "tower": tower, "block": block, "ratio": ratio, "loss": values[0],
                          "ce": values[1], "entropy": values[2], "better": better})

    def close_step(self, step, tower, block) -> None:
        rows = [r for r in self.rows if r["step"] == step]
        improved = [r for r in rows if r["better"]]
        ratio = improved[-1]["ratio"] if improved else 0.0  # the last improvement is the step's best
        for r in rows:
            r["accepted"] = r["ratio"] == ratio
        if ratio:
            self.edit[(tower, block)] = ratio

    def result(self, t0, settings) -> SearchResult:
        return SearchResult(dict(self.edit), pd.DataFrame(self.rows, columns=LOG_COLUMNS), time.time() - t0, settings)


@torch.no_grad()
def naive_search(loaded, split: SearchSplit, *, lam: float = 0.1, top_k: int = 3, ratios=RATIOS,
                 scale: float | None = None, batch_size: int | None = SEARCH_BATCH) -> SearchResult:
    """The published greedy search: every candidate is a freshly edited model, both towers re-run in full."""
    t0, rec = time.time(), _Record()
    scale = scale or min(float(loaded.model.logit_scale.detach().exp()), 100.0)
    for step, (tower, block) in enumerate(_order(loaded.model)):
        for ratio in ratios:
            m = setar_model(loaded, {**rec.edit, (tower, block): ratio}).model
            f = encode_images(m.visual, split.images, ("image", "local"))
            rec.consider(step, tower, block, ratio, objective(f["image"], f["local"], _text(m, split.tokens),
                                                              split.labels, scale=scale, lam=lam, top_k=top_k,
                                                              batch_size=batch_size))
        rec.close_step(step, tower, block)
    return rec.result(t0, {"lam": lam, "top_k": top_k, "ratios": list(ratios), "scale": scale,
                           "batch_size": batch_size, "search": "naive"})


def _attention_half(blk, x, attn_mask=None):
    """The first half of an open_clip residual block (what an edit of ``mlp.c_fc`` does not change)."""
    return x + blk.ls_1(blk.attention(q_x=blk.ln_1(x), attn_mask=attn_mask))


def _mlp_half(blk, x):
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


class _VisualTail(nn.Module):
    """The image tower from block ``start`` on, given the block's input ``h`` and its attention half ``mid``:
    global and local (GL-MCM) features."""

    def __init__(self, visual, start: int):
        super().__init__()
        self.visual, self.start = visual, start

    def forward(self, h, mid):
        blocks = self.visual.transformer.resblocks
        last = blocks[-1]
        if self.start < len(blocks) - 1:
            h = _mlp_half(blocks[self.start], mid)
            for blk in blocks[self.start + 1:-1]:
                h = blk(h)
            out = last(h)
        else:
            out = _mlp_half(last, mid)
        pooled, _ = self.visual._pool(out)
        image = F.normalize((pooled @ self.visual.proj).float(), dim=-1)
        local = F.normalize((self.visual.ln_post(value_path(last, h)[:, 1:]) @ self.visual.proj).float(), dim=-1)
        return image, local


class _TextTail(nn.Module):
    """The text tower from block ``start`` on, given that block's attention half ``mid``: normalised prompts."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, mid, tokens):
        m = self.model
        blocks = m.transformer.resblocks
        x = _mlp_half(blocks[self.start], mid)
        for blk in blocks[self.start + 1:]:
            x = blk(x, attn_mask=m.attn_mask)
        x = text_global_pool(m.ln_final(x), tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        proj = m.text_projection
        return F.normalize((proj(x) if isinstance(proj, nn.Linear) else x @ proj).float(), dim=-1)


def _block_inputs(blocks, h, **kwargs) -> list[torch.Tensor]:
    out = []
    for blk in blocks:
        out.append(h)
        h = blk(h, **kwargs)
    return out


@torch.no_grad()
def fast_search(loaded, split: SearchSplit, *, lam: float = 0.1, top_k: int = 3, ratios=RATIOS,
                scale: float | None = None, batch_size: int | None = SEARCH_BATCH) -> SearchResult:
    """The same greedy search (same choices, same objective values up to float rounding), computing each SVD
    once and re-running only the part of one tower that a candidate changes (module docstring). Two more savings:
    the attention half of the block under edit is computed once per step (the edit is in its MLP), and a ratio of
    0 is the accepted model, whose objective is the running best already."""
    t0, rec = time.time(), _Record()
    model = loaded.model
    scale = scale or min(float(model.logit_scale.detach().exp()), 100.0)
    order = _order(model)
    svds = {key: svd_of(model, *key) for key in order}
    visual = model.visual
    v_blocks, t_blocks = visual.transformer.resblocks, model.transformer.resblocks
    h_in = _block_inputs(v_blocks, visual._embeds(split.images))
    x0 = model.token_embedding(split.tokens).to(model.transformer.get_cast_dtype()) + model.positional_embedding
    x_in = _block_inputs(t_blocks, x0, attn_mask=model.attn_mask)
    text = _text(model, split.tokens)
    image = local = current = None

    accepted: dict[tuple[str, int], torch.Tensor] = {}  # the edited weights of the accepted ratios, computed once

    def overrides(tower, prefix, extra):
        weights = {k: w for k, w in accepted.items() if k[0] == tower}
        weights.update({k: svds[k].edited(r) for k, r in extra.items()})
        return {prefix + param_name(t, b).removeprefix("visual."): w for (t, b), w in weights.items()}

    for step, (tower, block) in enumerate(order):
        if tower == "visual":
            mid = _attention_half(v_blocks[block], h_in[block])
        else:
            if image is None:  # entering the text phase: the image features of the accepted image edit, fixed
                w = overrides("visual", "visual.", {})
                image, local = torch.func.functional_call(_VisualTail(visual, 0), w,
                                                          (h_in[0], _attention_half(v_blocks[0], h_in[0])))
            mid = _attention_half(t_blocks[block], x_in[block], model.attn_mask)
        for ratio in ratios:
            if ratio == 0 and current is not None:
                rec.consider(step, tower, block, ratio, current)  # the accepted model: its objective is known
                continue
            if tower == "visual":
                w = overrides("visual", "visual.", {(tower, block): ratio})
                img, loc = torch.func.functional_call(_VisualTail(visual, block), w, (h_in[block], mid))
                values = objective(img, loc, text, split.labels, scale=scale, lam=lam, top_k=top_k,
                                   batch_size=batch_size)
            else:
                w = overrides("text", "model.", {(tower, block): ratio})
                txt = torch.func.functional_call(_TextTail(model, block), w, (mid, split.tokens))
                values = objective(image, local, txt, split.labels, scale=scale, lam=lam, top_k=top_k,
                                   batch_size=batch_size)
            rec.consider(step, tower, block, ratio, values)
            if rec.rows[-1]["better"]:
                current = values
        rec.close_step(step, tower, block)
        if (tower, block) in rec.edit:
            accepted[(tower, block)] = svds[(tower, block)].edited(rec.edit[(tower, block)])
    return rec.result(t0, {"lam": lam, "top_k": top_k, "ratios": list(ratios), "scale": scale,
                           "batch_size": batch_size, "search": "fast"})


def make_split(loaded, dataset, template: str = "a photo of a {}") -> SearchSplit:
    """The search split of an :class:`~helpers.data.ImageFolderDataset`: its images through the model's own
    preprocessing, its labels, and the class prompts (MCM's ``a photo of a {}`` by default) tokenised."""
    images = torch.stack([loaded.preprocess(dataset.load_rgb(i)) for i in range(len(dataset))]).to(loaded.device)
    tokens = loaded.tokenizer([template.format(c) for c in dataset.class_names]).to(loaded.device)
    return SearchSplit(images, torch.as_tensor(dataset.labels, device=loaded.device), tokens, dataset)


def run_search(loaded, split: SearchSplit, *, method: str = "fast", use_cache: bool = True, **kwargs) -> SearchResult:
    """:func:`fast_search` or :func:`naive_search`, cached by the model, the split, the settings and the search
    code (the result keeps the seconds the search took when it ran)."""
    from ..cache import cached_tensors, code_hash
    from ..io import sha256_json

    run = {"fast": fast_search, "naive": naive_search}[method]
    kwargs.setdefault("batch_size", SEARCH_BATCH)  # in the key even when left at its default
    key = {"model": loaded.model_id, "split": sha256_json([list(split.images.shape), float(split.images.double().sum()),
                                                          split.labels.tolist(), split.tokens.tolist()]),
           "method": method, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
           "code": code_hash(run, objective, _batch_objective, locoop_entropy, _Record, _VisualTail, _TextTail, _attention_half,
                             _mlp_half, _block_inputs, setar_model, svd_of)}

    def build():
        r = run(loaded, split, **kwargs)
        return {}, {"edit": [[t, b, v] for (t, b), v in r.edit.items()], "log": r.log.to_dict("records"),
                    "seconds": r.seconds, "settings": r.settings}

    _, info, _ = cached_tensors("setar", f"search-{method}-{loaded.model_id}", key, build, use_cache=use_cache)
    return SearchResult({(t, b): v for t, b, v in info["edit"]}, pd.DataFrame(info["log"], columns=LOG_COLUMNS),
                        info["seconds"], info["settings"])
