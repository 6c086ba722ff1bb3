r"""k-nearest-neighbour score: similarity of an image to its nearest ID training images in feature space.

Papers: Sun, Ming, Zhu, Li. *Out-of-Distribution Detection with Deep Nearest Neighbors*, ICML 2022 (reference
code ``deeplearning-wisc/knn-ood``, ``run_imagenet.py``: faiss ``IndexFlatL2`` on L2-normalised features, score
``-D[:, k-1]``, the k-th nearest distance); PLP (Adaloglou et al., TMLR 2024; ``HHU-MMBS/plp-official-tmlr2024``,
``eval/ood_scores.py``, ``OOD_classifier_knn``), which uses the cosine similarity to the **1** nearest ID train
image as its unsupervised score.

With $\hat x$ the normalised feature of a test image and $\hat b_1, \dots, \hat b_M$ the normalised bank of ID
*training* features, let $s_{(1)} \ge s_{(2)} \ge \dots$ be the sorted cosines $\hat x^\top \hat b_m$:

.. math::

    \mathrm{kNN}_k(x) = s_{(k)} \quad (\texttt{reduction="kth"}), \qquad
    \mathrm{kNN}^{\text{mean}}_k(x) = \tfrac{1}{k} \textstyle\sum_{i \le k} s_{(i)} \quad (\texttt{"mean"}).

On the unit sphere $\lVert \hat x - \hat b \rVert^2 = 2 - 2\,\hat x^\top \hat b$, so ``"kth"`` ranks images
exactly as Sun et al.'s negative k-th Euclidean distance; ``"mean"`` is PLP's top-k average. For ``k = 1`` the
two coincide. Higher = more in-distribution.

Hyper-parameters: ``k`` — **1** in PLP (the default here); Sun et al. publish k = 50 (CIFAR-10, full train set)
and k = 1000 (ImageNet, full train set). ``normalize`` — both papers L2-normalise features first.

The bank never has to fit next to a full similarity matrix: queries are processed ``chunk_size`` rows at a
time against ``bank_chunk_size`` bank rows at a time, keeping a running top-k, so peak memory is
``chunk_size × (bank_chunk_size + k)`` floats whatever the bank size (ImageNet's 1.28M train images included).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

K_PLP = 1


def _as_tensor(name: str, x, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf; check the features it came from")
    return t


@torch.no_grad()
def knn_score(query: np.ndarray, bank: np.ndarray, k: int = K_PLP, *, reduction: str = "kth",
              normalize: bool = True, chunk_size: int = 1024, bank_chunk_size: int | None = 65536,
              device: str | torch.device = "cpu") -> np.ndarray:
    """kNN score (N,) of ``query`` (N, D) against the ID ``bank`` (M, D); see the module docstring.

    ``reduction``: ``"kth"`` (the k-th largest cosine; Sun et al.) or ``"mean"`` (mean of the k largest; PLP).
    ``chunk_size`` / ``bank_chunk_size`` bound memory (``bank_chunk_size=None`` compares with the whole bank at
    once); the result does not depend on them. ``device="cuda"`` runs the matrix products on a GPU.
    """
    if reduction not in ("kth", "mean"):
        raise ValueError(f"reduction must be 'kth' or 'mean', not {reduction!r}")
    q, b = _as_tensor("query", query, device), _as_tensor("bank", bank, device)
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"query has {q.shape[1]} feature dimensions but the bank has {b.shape[1]}; "
                         f"use the same feature kind (e.g. Features.image) for both")
    if not 1 <= k <= len(b):
        raise ValueError(f"k must be between 1 and the bank size {len(b)}, got {k}")
    if normalize:
        q, b = F.normalize(q, dim=1), F.normalize(b, dim=1)
    step_b = len(b) if bank_chunk_size is None else max(1, bank_chunk_size)
    out = torch.empty(len(q), dtype=torch.float32, device=q.device)
    for i in range(0, len(q), max(1, chunk_size)):
        qi = q[i:i + chunk_size]
        top = torch.full((len(qi), 0), -torch.inf, device=q.device)
        for j in range(0, len(b), step_b):
            sims = qi @ b[j:j + step_b].T  # (chunk, bank chunk)
            both = torch.cat([top, sims], dim=1)
            top = both.topk(min(k, both.shape[1]), dim=1).values  # running k largest, sorted descending
        out[i:i + len(qi)] = top[:, k - 1] if reduction == "kth" else top.mean(1)
    return out.cpu().numpy().astype(np.float64)
