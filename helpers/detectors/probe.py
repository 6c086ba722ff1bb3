r"""Scores on the logits of a linear probe: pseudo-label probing (PLP) and the supervised linear probe.

Paper: Adaloglou, Michels, Kaiser, Kollmann. *Adapting Contrastive Language-Image Pretrained (CLIP) Models for
Out-of-Distribution Detection*, TMLR 2024. Reference code: ``HHU-MMBS/plp-official-tmlr2024``:
``linear_probing.py`` (pseudo-labels, training), ``eval/ood_scores.py`` (``msp``, ``free_energy``, ``l1_norm``),
``logit_evaluation.py`` (default ``--temperatures 1.0``).

The probe $z = W \frac{f - m}{s} + b$ on standardised pre-projection features $f$ is trained by
:func:`helpers.probes.train_linear_probe` on the ID training split, with the true labels (``"linear_probe"``) or
with CLIP's zero-shot pseudo-labels $\tilde y_i = \arg\max_k \hat x_i^\top \hat t_k$ from the 5-prompt ensemble
(``"plp"``). Scores on its logits $z$ at temperature $T$ (higher = more ID):

.. math::

    \mathrm{MSP}(z) = \max_k \mathrm{softmax}(z/T)_k, \qquad
    \mathrm{Energy}(z) = T \log \textstyle\sum_k e^{z_k/T}, \qquad
    \mathrm{L1}(z) = \textstyle\sum_k \lvert z_k - \min_j z_j \rvert .

MSP is Hendrycks & Gimpel (2017), energy Liu et al. (2020), the L1 norm of the min-shifted logits PLP's
(``l1_norm(..., non_neg=True)``). Published defaults: ``T = 1``; probe: Adam, ``weight_decay=1e-3``,
``epochs=100``, ``batch_size=256`` (CIFAR; 8192 for ImageNet), ``lr=1e-3``, 10% warm-up, ``seed=42``.

Trained probes are cached (:func:`helpers.cache.cached_tensors`), keyed by the training features, the labels,
every hyper-parameter and the training code, so the three scores of one probe train it once.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache import cached_tensors, code_hash
from ..features import text_features
from ..metrics import accuracy
from ..probes.linear import lr_schedule, pseudo_labels, standardization, train_linear_probe
from ..prompts import get_prompts
from .base import Detector, register

SCORES = ("msp", "energy", "l1")
SCORE_TITLES = {"msp": "MSP", "energy": "energy", "l1": "L1"}


def msp_score(z: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability of logits (N, C) at temperature ``T``; (N,)."""
    return torch.softmax(z / T, dim=-1).amax(-1)


def energy_logit_score(z: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T · logsumexp(z / T)`` of logits (N, C); (N,)."""
    return T * torch.logsumexp(z / T, dim=-1)


def l1_score(z: torch.Tensor) -> torch.Tensor:
    """L1 norm of logits (N, C) after subtracting each row's minimum (PLP's ``non_neg=True``); (N,)."""
    return (z - z.amin(-1, keepdim=True)).abs().sum(-1)


def logit_score(z: torch.Tensor, score: str, T: float = 1.0) -> torch.Tensor:
    """One of :data:`SCORES` of logits ``z`` (N, C)."""
    if score == "msp":
        return msp_score(z, T)
    if score == "energy":
        return energy_logit_score(z, T)
    if score == "l1":
        return l1_score(z)
    raise ValueError(f"score must be one of {SCORES}, not {score!r}")


def features_id(feats) -> str:
    """What identifies a (subset of a) cached feature set: its cache key and its rows."""
    from ..io import sha256_json

    return sha256_json([feats.meta.get("key"), list(feats.paths)])


class _Probe(Detector):
    fits_on = ("train",)
    in_title = ("score",)
    hidden = ("seed",)  # the training seed is the run's (the seed column)
    labels = "true"

    def _title(self) -> str:
        return f"{self.title} · {SCORE_TITLES[self.params['score']]}"

    def __init__(self, score: str = "msp", T: float = 1.0, feature: str = "preproj", epochs: int = 100,
                 batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-3, warmup: float = 0.1,
                 seed: int = 42, standardize: bool = True, pseudo_prompts: str | list[str] = "plp5"):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {score!r}")
        params = dict(score=score, T=T, feature=feature, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, warmup=warmup, seed=seed, standardize=standardize)
        if self.labels == "pseudo":
            params["pseudo_prompts"] = pseudo_prompts
        super().__init__(**params)
        self.needs = (feature,)
        self.info: dict = {}
        self.train_labels: np.ndarray | None = None

    def fit(self, model, class_names, train=None):
        super().fit(model, class_names, train)
        p = self.params
        x = getattr(train, p["feature"])
        if x is None:
            raise ValueError(f"{self.label} trains on {p['feature']!r} features, which {train.dataset} lacks")
        key = {"model": model.image_id, "train": features_id(train), "labels": self.labels,
               "classes": list(class_names), **{k: v for k, v in p.items() if k not in ("score", "T")},
               "code": code_hash(train_linear_probe, standardization, lr_schedule, pseudo_labels)}
        if self.labels == "pseudo":
            text = text_features(model, list(class_names), get_prompts(p["pseudo_prompts"]))
            key["text"] = model.text_id
            y = pseudo_labels(train.image, text)
        else:
            y = train.labels

        def build():
            probe = train_linear_probe(x, y, num_classes=len(class_names), epochs=p["epochs"],
                                       batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
                                       warmup=p["warmup"], seed=p["seed"], standardize=p["standardize"],
                                       device=self.device)
            return vars(probe), {"train_images": len(y)}

        t, _, from_cache = cached_tensors("probes", f"{self.name}-{model.image_id}", key, build)
        self.weight, self.bias, self.mean, self.std = (t[k].double().to(self.device)
                                                       for k in ("weight", "bias", "mean", "std"))
        self.train_labels = np.asarray(y)
        self.info = {"train_images": len(y), "label_accuracy": 100 * accuracy(y, train.labels),
                     "from_cache": from_cache}
        return self

    def logits(self, **features) -> torch.Tensor:
        x = features[self.params["feature"]]
        return ((x - self.mean.to(x.dtype)) / self.std.to(x.dtype)) @ self.weight.to(x.dtype).T + self.bias.to(x.dtype)

    def score(self, **features) -> torch.Tensor:
        return logit_score(self.logits(**features), self.params["score"], self.params["T"])


@register
class LinearProbe(_Probe):
    """The supervised linear probe (true labels of the ID training split) scored by MSP / energy / L1."""

    name, title = "linear_probe", "linear probe"


@register
class PLP(_Probe):
    """Pseudo-label probing: the same probe trained on CLIP's zero-shot labels of the training images."""

    name, title, labels = "plp", "PLP", "pseudo"
