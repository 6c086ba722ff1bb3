r"""Mahalanobis and relative Mahalanobis scores: distance to the nearest class Gaussian in feature space.

Papers: Lee, Lee, Lee, Shin. *A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks*, NeurIPS 2018 (reference code ``pokaxpoka/deep_Mahalanobis_detector``,
``lib_generation.py``, ``sample_estimator``: class means and one covariance of the class-centred features).
Ren, Fort, Liu, Roy, Padhy, Lakshminarayanan. *A Simple Fix to Mahalanobis Distance for Improving Near-OOD
Detection*, 2021 (arXiv:2106.09022; relative Mahalanobis). PLP reports both for small ID sets
(``HHU-MMBS/plp-official-tmlr2024``, ``eval/ood_scores.py``, ``MahaDist``).

Fit on ID training features $f_i$ with labels $y_i$: class means $\mu_c$, one shared covariance
$\Sigma$ and, for the relative score, a background Gaussian $(\mu_0, \Sigma_0)$ of all features:

.. math::

    d_c(x) = (f - \mu_c)^\top \Sigma^{-1} (f - \mu_c), \qquad d_0(x) = (f - \mu_0)^\top \Sigma_0^{-1} (f - \mu_0),

.. math::

    \mathrm{Maha}(x) = -\min_c d_c(x), \qquad \mathrm{RelMaha}(x) = -\min_c \big(d_c(x) - d_0(x)\big).

Higher = more in-distribution. Subtracting $d_0$ removes the directions in which *all* ID data varies, which
Ren et al. show helps near-OOD.

Hyper-parameters: ``covariance`` — ``"pooled"`` (default; Lee et al.: $\Sigma = \frac1N \sum_i (f_i -
\mu_{y_i})(f_i - \mu_{y_i})^\top$) or ``"class_mean"`` (PLP's code: the mean of the per-class unbiased
covariances; equal up to the factor $(n-1)/n$ when classes are balanced). Inverses are pseudo-inverses in
float64, so a rank-deficient covariance (fewer images than dimensions) still gives finite scores.
PLP's ``logit_evaluation.py`` fits these Gaussians on probe *logits*; Lee et al. on features. The functions
take any (N, D) array; notebook 03 uses the standardised pre-projection features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MahalanobisFit:
    """Gaussians fitted on ID training features; ``whiten`` satisfies ``whiten @ whiten.T = Σ⁻¹``."""

    means: np.ndarray  # (C, D) class means
    whiten: np.ndarray  # (D, D) square root of the shared precision
    background_mean: np.ndarray  # (D,)
    background_whiten: np.ndarray  # (D, D) square root of the background precision
    covariance: str


def _precision_root(cov: np.ndarray) -> np.ndarray:
    """``W`` with ``W @ W.T = pinv(cov)`` for a symmetric PSD ``cov`` (D, D)."""
    w, v = np.linalg.eigh(cov)
    tol = w.max() * len(w) * np.finfo(np.float64).eps  # numpy's pinv cut-off for hermitian matrices
    inv = np.where(w > tol, 1.0 / np.where(w > tol, w, 1.0), 0.0)
    return v * np.sqrt(inv)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                    covariance: str = "pooled") -> MahalanobisFit:
    """Class means, shared covariance and background Gaussian of ``features`` (N, D) with ``labels`` (N,)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"features must be (N, D) and labels (N,); got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN/inf; check the feature extraction")
    if covariance not in ("pooled", "class_mean"):
        raise ValueError(f"covariance must be 'pooled' or 'class_mean', not {covariance!r}")
    classes = np.arange(num_classes if num_classes is not None else int(y.max()) + 1)
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"labels must lie in [0, {len(classes)}), got [{y.min()}, {y.max()}]")
    empty = [int(c) for c in classes if not (y == c).any()]
    if empty:
        raise ValueError(f"classes {empty[:10]} have no training features; a class mean needs at least one "
                         f"image (pass num_classes to match the labels, or add images of those classes)")
    means = np.stack([x[y == c].mean(0) for c in classes])
    if covariance == "pooled":
        centred = x - means[y]
        cov = centred.T @ centred / len(x)
    else:
        covs = [np.cov(x[y == c], rowvar=False) for c in classes if (y == c).sum() > 1]
        if not covs:
            raise ValueError("covariance='class_mean' needs at least one class with two or more images")
        cov = np.mean(covs, axis=0)
    mu0 = x.mean(0)
    cov0 = (x - mu0).T @ (x - mu0) / len(x)
    return MahalanobisFit(means, _precision_root(cov), mu0, _precision_root(cov0), covariance)


def class_distances(features: np.ndarray, fit: MahalanobisFit, chunk_size: int = 8192) -> np.ndarray:
    """Squared Mahalanobis distances ``d_c`` (N, C) of ``features`` (N, D) to every class mean."""
    m = fit.means @ fit.whiten  # class means in whitened coordinates
    out = []
    for i in range(0, len(features), chunk_size):
        z = np.asarray(features[i:i + chunk_size], dtype=np.float64) @ fit.whiten
        # ||z - m_c||^2 expanded: one (chunk, C) product instead of C (chunk, D, D) products
        out.append((z ** 2).sum(1, keepdims=True) - 2 * z @ m.T + (m ** 2).sum(1))
    return np.maximum(np.concatenate(out), 0.0)


def background_distance(features: np.ndarray, fit: MahalanobisFit) -> np.ndarray:
    """Squared Mahalanobis distance ``d_0`` (N,) to the background Gaussian of all ID features."""
    z = (np.asarray(features, dtype=np.float64) - fit.background_mean) @ fit.background_whiten
    return (z ** 2).sum(1)


def mahalanobis_score(features: np.ndarray, fit: MahalanobisFit, *, relative: bool = False) -> np.ndarray:
    """``-min_c d_c`` (or ``-min_c (d_c - d_0)`` with ``relative=True``) for ``features`` (N, D); (N,)."""
    if np.asarray(features).shape[-1] != fit.means.shape[1]:
        raise ValueError(f"features have {np.asarray(features).shape[-1]} dimensions but the fit has "
                         f"{fit.means.shape[1]}; score the same feature kind the Gaussians were fitted on")
    d = class_distances(features, fit)
    if relative:
        d = d - background_distance(features, fit)[:, None]
    return -d.min(1)
