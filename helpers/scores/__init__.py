"""OOD scores, one module per family. Every score is a pure function: arrays in, one number per image out,
**higher = more in-distribution**.

- :mod:`helpers.scores.mcm`  MCM and the classic logit scores (MSP, max-logit, energy, entropy, variance)
  on CLIP's cosine similarities.
- :mod:`helpers.scores.glmcm` GL-MCM: global MCM + λ · the best patch-level MCM (and L-MCM alone).
- :mod:`helpers.scores.neglabel` NegLabel: ID share of a softmax over ID labels and mined negative labels.
- :mod:`helpers.scores.logits` MSP, energy and the L1 norm of min-shifted logits on a probe's logits (PLP).
- :mod:`helpers.scores.knn` k-th nearest cosine similarity to an ID feature bank (kNN; PLP's 1-NN).
- :mod:`helpers.scores.mahalanobis` Mahalanobis and relative Mahalanobis distance to class Gaussians.
"""

from .glmcm import glmcm, glmcm_from_features, local_mcm, local_mcm_from_features
from .knn import knn_score
from .logits import l1_norm, logit_scores
from .mahalanobis import MahalanobisFit, fit_mahalanobis, mahalanobis_score
from .mcm import cosine_logits, energy, entropy_score, max_logit, mcm, msp, variance_score
from .neglabel import (
    NegativeLabels,
    mine_negative_labels,
    negative_quantiles,
    neglabel,
    neglabel_from_features,
    select_negatives,
)

__all__ = ["cosine_logits", "energy", "entropy_score", "max_logit", "mcm", "msp", "variance_score",
           "glmcm", "glmcm_from_features", "local_mcm", "local_mcm_from_features",
           "NegativeLabels", "mine_negative_labels", "negative_quantiles", "neglabel", "neglabel_from_features",
           "select_negatives",
           "knn_score", "l1_norm", "logit_scores", "MahalanobisFit", "fit_mahalanobis", "mahalanobis_score"]
