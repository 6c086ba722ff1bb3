r"""Maximum Concept Matching (MCM) and the classic confidence scores on CLIP's cosine similarities.

Paper: Ming, Cai, Gu, Sun, Li, Li. *Delving into Out-of-Distribution Detection with Vision-Language
Representations*, NeurIPS 2022. Reference code: ``deeplearning-wisc/MCM``, ``utils/detection_util.py``
(``get_ood_scores_clip``), which negates its scores (lower = ID); here higher = more ID.

With $s_k = \cos(\hat x, \hat t_k)$ the cosine between an image and class prompt $k$ and a temperature $T$:

.. math::

    \mathrm{MCM}(x) = \max_k \frac{e^{s_k/T}}{\sum_j e^{s_j/T}}, \qquad
    \mathrm{MaxLogit}(x) = \max_k s_k/T, \qquad
    \mathrm{Energy}(x) = T \log \sum_k e^{s_k/T},

.. math::

    \mathrm{Entropy}(x) = -H\big(\mathrm{softmax}(s/T)\big), \qquad
    \mathrm{Variance}(x) = \mathrm{Var}_k\, \mathrm{softmax}(s/T)_k .

Temperature is explicit. MCM publishes **T = 1** (softmax over raw cosines; SeTAR writes it as
``100·cos / 100``). CLIP's own logits are ``100·cos``, i.e. **T = 0.01**, which is also pytorch-ood's ``MCM``
default. MSP at CLIP's scale is ``mcm(s, T=0.01)``. Because a softmax over cosines at T = 1 is nearly uniform,
MCM at T = 1 has tiny values (about 1/K) but its *ranking* is what the metrics use.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax

T_MCM = 1.0  # MCM paper and code
T_CLIP = 0.01  # CLIP's logit scale 100

# Published ImageNet-1k results (FPR95 / AUROC in %, ID-positive FPR95), REFERENCE.md.
PUBLISHED = [
    {"method": "MCM", "backbone": backbone, "source": source, "ood": o, "fpr95": f, "auroc": a}
    for backbone, source, rows in [
        ("ViT-B-16", "MCM paper (Ming et al. 2022)", {"inaturalist": (30.91, 94.61), "sun": (37.59, 92.57),
                                                      "places": (44.69, 89.77), "textures": (57.77, 86.11),
                                                      "average": (42.74, 90.77)}),
        ("ViT-B-16", "SeTAR re-run", {"inaturalist": (32.07, 94.43), "sun": (38.65, 92.37), "places": (43.73, 90.03),
                                      "textures": (57.89, 86.13), "average": (43.09, 90.74)}),
        ("ViT-L-14", "SeTAR re-run", {"inaturalist": (28.17, 94.97), "sun": (29.18, 94.12), "places": (33.66, 92.37),
                                      "textures": (57.73, 85.46), "average": (37.19, 91.73)}),
    ]
    for o, (f, a) in rows.items()
]
PUBLISHED_ID_ACCURACY = {("ViT-B-16", "SeTAR re-run"): 63.98, ("ViT-L-14", "SeTAR re-run"): 70.31}


def cosine_logits(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Cosine similarities (N, K) of normalised image (N, D) and text (K, D) embeddings."""
    return np.asarray(image, dtype=np.float32) @ np.asarray(text, dtype=np.float32).T


def mcm(cos: np.ndarray, T: float = T_MCM) -> np.ndarray:
    """MCM score (N,): the largest softmax probability of ``cos / T``; ``cos`` is (N, K)."""
    return softmax(np.asarray(cos, dtype=np.float64) / T, axis=1).max(1)


def msp(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """Maximum softmax probability of arbitrary logits (N, K) at temperature ``T`` (Hendrycks & Gimpel, 2017)."""
    return mcm(logits, T)


def max_logit(cos: np.ndarray, T: float = T_CLIP) -> np.ndarray:
    """Largest logit ``max_k cos_k / T`` (Hendrycks et al., 2022); (N, K) -> (N,)."""
    return np.asarray(cos, dtype=np.float64).max(1) / T


def energy(cos: np.ndarray, T: float = T_CLIP) -> np.ndarray:
    """Negative free energy ``T · logsumexp(cos / T)`` (Liu et al., 2020); (N, K) -> (N,)."""
    return T * logsumexp(np.asarray(cos, dtype=np.float64) / T, axis=1)


def entropy_score(cos: np.ndarray, T: float = T_CLIP) -> np.ndarray:
    """Negative entropy of ``softmax(cos / T)`` (confident = low entropy = ID); (N, K) -> (N,)."""
    p = softmax(np.asarray(cos, dtype=np.float64) / T, axis=1)
    return (p * np.log(np.clip(p, 1e-300, None))).sum(1)


def variance_score(cos: np.ndarray, T: float = T_MCM) -> np.ndarray:
    """Variance of the softmax probabilities across classes (MCM repository's ``var`` score); (N,)."""
    return softmax(np.asarray(cos, dtype=np.float64) / T, axis=1).var(1)
