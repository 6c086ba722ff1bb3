r"""Maximum Concept Matching (MCM) and the classic confidence scores on CLIP's cosine similarities.

Paper: Ming, Cai, Gu, Sun, Li, Li. *Delving into Out-of-Distribution Detection with Vision-Language
Representations*, NeurIPS 2022. Reference code: ``deeplearning-wisc/MCM``, ``utils/detection_util.py``
(``get_ood_scores_clip``), which negates its scores (lower = ID); here higher = more ID.

With $s_k = \cos(\hat x, \hat t_k)$ the cosine between an image and class prompt $k$ and a temperature $T$:

.. math::

    \mathrm{MCM}(x) = \max_k \frac{e^{s_k/T}}{\sum_j e^{s_j/T}}, \qquad
    \mathrm{MaxLogit}(x) = \max_k s_k/T, \qquad
    \mathrm{Energy}(x) = T \log \sum_k e^{s_k/T}, \qquad
    \mathrm{Entropy}(x) = -H\big(\mathrm{softmax}(s/T)\big).

**Temperature** is a constructor argument of every detector here, with the same default: **T = 1**, MCM's
published setting, which its code also uses for energy, max-logit and entropy (softmax over raw cosines; SeTAR
writes it ``100·cos / 100``). CLIP's own logits are ``100·cos``, i.e. **T = 0.01** (pytorch-ood's ``MCM``
default); MSP on CLIP's logits is ``MCM(T=0.01)``. ``T="model"`` takes the model's own scale,
``1 / exp(logit_scale)``. Max-logit ranks images the same at any T; MCM, energy and entropy do not.

**Prompts**: ``"single"`` = ``a photo of a {}`` (MCM, SeTAR); any prompt set of :mod:`helpers.prompts`.
"""

from __future__ import annotations

import torch

from ..features import text_features
from ..prompts import get_prompts
from .base import Detector, register

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


# ------------------------------------------------------------------ pure scoring functions (torch)
def mcm_score(cos: torch.Tensor, T: float) -> torch.Tensor:
    """Largest softmax probability of ``cos / T``; (N, K) -> (N,)."""
    return torch.softmax(cos / T, dim=-1).amax(-1)


def max_logit_score(cos: torch.Tensor, T: float) -> torch.Tensor:
    """``max_k cos_k / T`` (Hendrycks et al., 2022); (N, K) -> (N,)."""
    return cos.amax(-1) / T


def energy_score(cos: torch.Tensor, T: float) -> torch.Tensor:
    """Negative free energy ``T · logsumexp(cos / T)`` (Liu et al., 2020); (N, K) -> (N,)."""
    return T * torch.logsumexp(cos / T, dim=-1)


def entropy_score(cos: torch.Tensor, T: float) -> torch.Tensor:
    """Negative entropy of ``softmax(cos / T)`` (confident = low entropy = ID); (N, K) -> (N,)."""
    logp = torch.log_softmax(cos / T, dim=-1)
    return (logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------ detectors
class ZeroShotDetector(Detector):
    """A detector on cosines between image embeddings and the ID class prompts' text embeddings.

    :meth:`fit` embeds ``class_names`` with the prompt set ``prompts`` (ensembled and normalised) and resolves
    ``T="model"`` to the model's own temperature. :meth:`logits` are the cosines (zero-shot classification).
    """

    shown = ("T",)

    def __init__(self, T: float | str = T_MCM, prompts: str | list[str] = "single"):
        self._init(T=T, prompts=prompts)

    def _init(self, T, prompts, **more) -> None:
        """Record the parameters (subclasses with more of them call this from their own ``__init__``)."""
        if not (T == "model" or (isinstance(T, (int, float)) and T > 0)):
            raise ValueError(f"T must be a positive number or 'model' (the model's own logit scale), not {T!r}")
        Detector.__init__(self, T=T, prompts=prompts, **more)
        self.text: torch.Tensor | None = None

    @property
    def T(self) -> float:
        return self.resolved.get("T_value", self.params["T"])

    def fit(self, model, class_names, train=None):
        super().fit(model, class_names, train)
        self.text = torch.as_tensor(text_features(model, list(class_names), get_prompts(self.params["prompts"])),
                                    dtype=torch.float64, device=self.device)
        if self.params["T"] == "model":
            self.resolved["T_value"] = float(1.0 / model.model.logit_scale.detach().exp().clamp(max=100).cpu())
        return self

    def cosines(self, image: torch.Tensor) -> torch.Tensor:
        return image @ self.text.to(image.dtype).T

    def logits(self, image: torch.Tensor, **_) -> torch.Tensor:
        return self.cosines(image)


@register
class MCM(ZeroShotDetector):
    """MCM: the largest softmax probability over the class prompts at temperature ``T`` (module docstring)."""

    name, title = "mcm", "MCM"

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return mcm_score(self.cosines(image), self.T)


@register
class MaxLogit(ZeroShotDetector):
    """Max-logit ``max_k s_k / T`` (module docstring)."""

    name, title = "max_logit", "max-logit"

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return max_logit_score(self.cosines(image), self.T)


@register
class Energy(ZeroShotDetector):
    """Energy ``T log Σ_k exp(s_k / T)`` on the cosines (module docstring)."""

    name, title = "energy", "energy"

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return energy_score(self.cosines(image), self.T)


@register
class Entropy(ZeroShotDetector):
    """Negative entropy of ``softmax(s / T)`` (module docstring)."""

    name, title = "entropy", "entropy"

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return entropy_score(self.cosines(image), self.T)
