"""OOD detectors: one small class per method (formula, paper and reference code in each module's docstring),
scoring in torch, registered by name. Higher score = more in-distribution everywhere.

===========================  ==========================================  =====================  ===========
name                         method                                      features               fitted on
===========================  ==========================================  =====================  ===========
``mcm``                      MCM (Ming et al., NeurIPS 2022)             image                  text
``max_logit``, ``energy``,   classic confidence scores on CLIP cosines   image                  text
``entropy``
``l_mcm``, ``gl_mcm``        L-MCM, GL-MCM (Miyai et al., 2023)          local (+ image)        text
``neglabel``                 NegLabel (Jiang et al., ICLR 2024)          image                  text + words
``plp``, ``linear_probe``    PLP / linear probe (Adaloglou et al. 2024)  preproj                train split
``knn``                      kNN (Sun et al., ICML 2022; PLP's 1-NN)     preproj or image       train split
``mahalanobis``,             (relative) Mahalanobis (Lee et al. 2018;    preproj                train split
``relative_mahalanobis``     Ren et al. 2021)
``head``                     MSP / energy on a fine-tuned model's head   image                  the model
===========================  ==========================================  =====================  ===========

``get(spec)`` builds one from a name, ``{"name": ..., **params}`` or ``"module:Class"``; ``available()`` lists
them. :func:`helpers.evaluation.evaluate` fits and scores a list of them on a benchmark.
"""

from .base import REGISTRY, Detector, UnknownDetectorError, available, get, register, with_defaults
from .glmcm import GLMCM, LMCM, local_mcm_score
from .head import Head
from .knn import KNN, knn_score
from .mahalanobis import Mahalanobis, MahalanobisFit, RelativeMahalanobis, fit_mahalanobis, mahalanobis_score
from .mcm import (
    MCM,
    Energy,
    Entropy,
    MaxLogit,
    ZeroShotDetector,
    energy_score,
    entropy_score,
    max_logit_score,
    mcm_score,
)
from .neglabel import NegativeLabels, NegLabel, group_indices, mine_negative_labels, neglabel_score
from .probe import PLP, LinearProbe, l1_score, logit_score, msp_score

__all__ = [
    "REGISTRY", "Detector", "UnknownDetectorError", "available", "get", "register", "with_defaults",
    "MCM", "MaxLogit", "Energy", "Entropy", "ZeroShotDetector", "mcm_score", "max_logit_score", "energy_score",
    "entropy_score", "GLMCM", "LMCM", "local_mcm_score", "NegLabel", "NegativeLabels", "group_indices",
    "mine_negative_labels", "neglabel_score", "PLP", "LinearProbe", "msp_score", "l1_score", "logit_score",
    "KNN", "knn_score", "Mahalanobis", "RelativeMahalanobis", "MahalanobisFit", "fit_mahalanobis",
    "mahalanobis_score", "Head",
]
