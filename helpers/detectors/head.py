r"""Scores on the logits of a classification head trained with the model (a fine-tuned image tower's head).

A model fine-tuned by :func:`helpers.finetune.finetune_image_tower` carries its head $z = W \hat f_\theta(x) + b$
on the normalised image embedding (:attr:`helpers.models.LoadedModel.head`). This detector scores $z$ with
MSP, energy or the L1 norm at temperature $T$ (:mod:`helpers.detectors.probe` gives the formulas), as PLP scores
its fine-tuning baseline (``HHU-MMBS/plp-official-tmlr2024``, ``finetune.py`` + ``logit_evaluation.py``, T = 1).
"""

from __future__ import annotations

import torch

from .base import Detector, register
from .probe import SCORE_TITLES, SCORES, logit_score


@register
class Head(Detector):
    """MSP / energy / L1 on the logits of the model's own classification head (module docstring)."""

    name, title = "head", "head"
    in_title = ("score",)

    def __init__(self, score: str = "msp", T: float = 1.0):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {score!r}")
        super().__init__(score=score, T=T)

    def _title(self) -> str:
        return f"head · {SCORE_TITLES[self.params['score']]}"

    def fit(self, model, class_names, train=None):
        super().fit(model, class_names, train)
        if model.head is None:
            raise ValueError(f"model {model.model_id} has no classification head; the 'head' detector scores "
                             f"fine-tuned models (helpers.finetune.finetune_image_tower)")
        w, b = model.head
        if len(w) != len(class_names):
            raise ValueError(f"the head of {model.model_id} has {len(w)} classes but {len(class_names)} class names "
                             f"were given")
        self.weight = torch.as_tensor(w, dtype=torch.float64, device=self.device)
        self.bias = torch.as_tensor(b, dtype=torch.float64, device=self.device)
        return self

    def logits(self, image: torch.Tensor, **_) -> torch.Tensor:
        return image @ self.weight.to(image.dtype).T + self.bias.to(image.dtype)

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return logit_score(self.logits(image), self.params["score"], self.params["T"])
