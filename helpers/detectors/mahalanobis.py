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
covariances). Inverses are pseudo-inverses in float64, so a rank-deficient covariance (fewer images than
dimensions) still gives finite scores. ``feature``: the pre-projection features by default (Lee et al. fit on
features; PLP's ``logit_evaluation.py`` fits on probe *logits*). The scores are invariant to a per-dimension
standardisation of the features, so none is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Detector, register


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


def mahalanobis_score(f: torch.Tensor, means: torch.Tensor, whiten: torch.Tensor,
                      background_mean: torch.Tensor | None = None,
                      background_whiten: torch.Tensor | None = None) -> torch.Tensor:
    """``-min_c d_c`` (N,) of features ``f`` (N, D); with the background Gaussian, ``-min_c (d_c - d_0)``."""
    z, m = f @ whiten, means @ whiten  # whitened coordinates
    d = ((z ** 2).sum(1, keepdim=True) - 2 * z @ m.T + (m ** 2).sum(1)).clamp_min(0)  # (N, C) squared distances
    if background_mean is not None:
        d = d - (((f - background_mean) @ background_whiten) ** 2).sum(1, keepdim=True)
    return -d.amin(1)


@register
class Mahalanobis(Detector):
    """Mahalanobis distance to the nearest class Gaussian of the ID training features (module docstring)."""

    name, title = "mahalanobis", "Mahalanobis"
    fits_on = ("train",)
    relative = False

    def __init__(self, feature: str = "preproj", covariance: str = "pooled"):
        super().__init__(feature=feature, covariance=covariance)
        self.needs = (feature,)

    def fit(self, model, class_names, train=None):
        super().fit(model, class_names, train)
        fit = fit_mahalanobis(getattr(train, self.params["feature"]), train.labels, num_classes=len(class_names),
                              covariance=self.params["covariance"])
        t = {k: torch.as_tensor(v, dtype=torch.float64, device=self.device) for k, v in vars(fit).items()
             if isinstance(v, np.ndarray)}
        self.means, self.whiten = t["means"], t["whiten"]
        self.background_mean, self.background_whiten = t["background_mean"], t["background_whiten"]
        return self

    def score(self, **features) -> torch.Tensor:
        f = features[self.params["feature"]]
        bg = (self.background_mean.to(f.dtype), self.background_whiten.to(f.dtype)) if self.relative else (None, None)
        return mahalanobis_score(f, self.means.to(f.dtype), self.whiten.to(f.dtype), *bg)


@register
class RelativeMahalanobis(Mahalanobis):
    """Relative Mahalanobis: class distance minus the distance to the background Gaussian (Ren et al., 2021)."""

    name, title = "relative_mahalanobis", "relative Mahalanobis"
    relative = True
