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
exactly as Sun et al.'s negative k-th Euclidean distance; for ``k = 1`` the two reductions coincide.

**Which features** (``feature``, ``standardize``) moves the numbers by several points. PLP's code (the published
setting, the default here) stores the *pre-projection* features and, with its ``embed_norm`` option, standardises
them with the training mean and std before the cosine: ``feature="preproj", standardize=True``. The CLIP
embedding after the projection is ``feature="image", standardize=False``. Sun et al. publish k = 50 (CIFAR-10)
and k = 1000 (ImageNet) on a supervised network's penultimate features.

The bank never has to fit next to a full similarity matrix: queries are scored against ``bank_chunk`` bank rows
at a time, keeping a running top-k, so memory is bounded whatever the bank size (ImageNet's 1.28M images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Detector, register


def knn_score(query: torch.Tensor, bank: torch.Tensor, k: int = 1, reduction: str = "kth",
              bank_chunk: int = 65536) -> torch.Tensor:
    """kNN score (N,) of normalised ``query`` (N, D) against the normalised ID ``bank`` (M, D)."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be between 1 and the bank size {len(bank)}, got {k}")
    top = query.new_full((len(query), 0), -torch.inf)
    for j in range(0, len(bank), bank_chunk):
        both = torch.cat([top, query @ bank[j:j + bank_chunk].to(query.dtype).T], dim=1)
        top = both.topk(min(k, both.shape[1]), dim=1).values  # running k largest, sorted descending
    return top[:, k - 1] if reduction == "kth" else top.mean(1)


@register
class KNN(Detector):
    """kNN cosine similarity to the ID training features (module docstring)."""

    name, title = "knn", "kNN"
    fits_on = ("train",)
    shown = ("k", "feature")

    def __init__(self, k: int = 1, feature: str = "preproj", standardize: bool = True, reduction: str = "kth"):
        if reduction not in ("kth", "mean"):
            raise ValueError(f"reduction must be 'kth' or 'mean', not {reduction!r}")
        super().__init__(k=k, feature=feature, standardize=standardize, reduction=reduction)
        self.needs = (feature,)

    def fit(self, model, class_names, train=None):
        super().fit(model, class_names, train)
        x = torch.as_tensor(getattr(train, self.params["feature"]), dtype=torch.float64, device=self.device)
        if self.params["standardize"]:
            self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-12)
        else:
            self.mean, self.std = torch.zeros_like(x[0]), torch.ones_like(x[0])
        self.bank = F.normalize((x - self.mean) / self.std, dim=1)
        return self

    def score(self, **features) -> torch.Tensor:
        x = features[self.params["feature"]]
        q = F.normalize((x - self.mean.to(x.dtype)) / self.std.to(x.dtype), dim=1)
        return knn_score(q, self.bank, self.params["k"], self.params["reduction"])
