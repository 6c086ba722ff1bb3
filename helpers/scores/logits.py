r"""Confidence scores on the logits of a trained classifier head (PLP's pseudo-label probe, a linear probe).

Paper: Adaloglou, Michels, Kaiser, Kollmann. *Adapting Contrastive Language-Image Pretrained (CLIP) Models for
Out-of-Distribution Detection*, TMLR 2024. Reference code: ``HHU-MMBS/plp-official-tmlr2024``,
``eval/ood_scores.py`` (``msp``, ``free_energy``, ``l1_norm``), called from ``logit_evaluation.py`` at the
default temperature ``--temperatures 1.0``.

With $z \in \mathbb{R}^C$ the logits of one image and a temperature $T$:

.. math::

    \mathrm{MSP}(z) = \max_k \frac{e^{z_k/T}}{\sum_j e^{z_j/T}}, \qquad
    \mathrm{Energy}(z) = T \log \sum_k e^{z_k/T}, \qquad
    \mathrm{L1}(z) = \sum_k \big| z_k - \min_j z_j \big| .

MSP is Hendrycks & Gimpel (2017), energy Liu et al. (2020); the L1 norm of the min-shifted logits is PLP's
(``l1_norm(..., non_neg=True)``): shifting by the minimum makes every entry non-negative, so the score grows
with how far the logits spread above their floor. Higher = more in-distribution for all three.

Hyper-parameters: ``T = 1`` (PLP's published setting). These are the same formulas as MSP and energy on CLIP's
cosines in :mod:`helpers.scores.mcm`; only the default temperature differs (probe logits are unscaled, so
``T = 1`` is their natural scale), and this module reuses those implementations.
"""

from __future__ import annotations

import numpy as np

from . import mcm

T_PROBE = 1.0  # PLP's logit_evaluation.py default


def msp(logits: np.ndarray, T: float = T_PROBE) -> np.ndarray:
    """Maximum softmax probability of ``logits`` (N, C) at temperature ``T``; (N,)."""
    return mcm.msp(logits, T)


def energy(logits: np.ndarray, T: float = T_PROBE) -> np.ndarray:
    """Negative free energy ``T · logsumexp(logits / T)`` of ``logits`` (N, C); (N,)."""
    return mcm.energy(logits, T)


def l1_norm(logits: np.ndarray, shift_min: bool = True) -> np.ndarray:
    """L1 norm of the logits (N, C) after subtracting each row's minimum (PLP's ``non_neg=True``); (N,)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    if shift_min:
        z = z - z.min(1, keepdims=True)
    return np.abs(z).sum(1)


def logit_scores(logits: np.ndarray, T: float = T_PROBE) -> dict[str, np.ndarray]:
    """All three PLP logit scores of ``logits`` (N, C): ``{"MSP", "energy", "L1"}`` -> (N,) each."""
    return {"MSP": msp(logits, T), "energy": energy(logits, T), "L1": l1_norm(logits)}
