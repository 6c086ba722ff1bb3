"""Notebook 03's line-up in one object: MCM, PLP, a supervised linear probe, kNN and Mahalanobis, fitted once
on an ID *training* split and then applied to any feature set.

Every detector here needs the same inputs — the features of an ID training split (``image`` and ``preproj``)
and the class names — so :func:`fit_detectors` fits them together and :meth:`DetectorSuite.scores` returns one
score array per method (higher = more ID). :func:`detector_table` turns those into one row per (method, OOD
set) with AUROC / FPR95 and bootstrap intervals. Notebook 03 uses it for the main comparison, for each member of
a model family and for the familiar-OOD experiment, so the three are scored by the same code.

Which features each method sees (as published):

- MCM: post-projection image embedding vs text embeddings of the ID prompts (``mcm_prompts``, T = 1);
- PLP: a linear probe on standardised pre-projection features, trained on pseudo-labels from the
  ``pseudo_prompts`` ensemble; scored by MSP / energy / L1 of its logits at ``T_probe`` = 1;
- linear probe: the same probe trained on the true labels;
- kNN: cosine of the post-projection embedding to the ``knn_k``-th nearest training embedding (PLP: k = 1);
- Mahalanobis / relative Mahalanobis: class Gaussians (true labels) of the pre-projection features. They are
  invariant to PLP's per-dimension standardisation, so the raw features are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..features import Features, text_features
from ..metrics import accuracy, ood_report
from ..prompts import get_prompts
from ..scores.knn import knn_score
from ..scores.logits import logit_scores
from ..scores.mahalanobis import MahalanobisFit, fit_mahalanobis, mahalanobis_score
from ..scores.mcm import cosine_logits, mcm
from .linear import LinearProbe, pseudo_labels, train_linear_probe

# method name -> family, in display order
METHODS: dict[str, str] = {
    "MCM": "zero-shot",
    "PLP · MSP": "pseudo-label probe", "PLP · energy": "pseudo-label probe", "PLP · L1": "pseudo-label probe",
    "Linear probe · MSP": "supervised probe", "Linear probe · energy": "supervised probe",
    "Linear probe · L1": "supervised probe",
    "kNN": "feature space", "Mahalanobis": "feature space", "Rel. Mahalanobis": "feature space",
}


@dataclass
class DetectorSuite:
    mcm_text: np.ndarray  # (C, D) text embeddings of the MCM prompts
    pseudo_text: np.ndarray  # (C, D) prompt-ensemble embeddings that define the pseudo-labels
    pseudo: np.ndarray  # (M,) pseudo-labels of the training split
    plp: LinearProbe
    supervised: LinearProbe
    bank: np.ndarray  # (M, D) normalised training image embeddings (the kNN memory)
    maha: MahalanobisFit
    knn_k: int = 1
    T_mcm: float = 1.0
    T_probe: float = 1.0
    device: str = "cpu"  # where the kNN search runs (a GPU for ImageNet-sized banks)
    info: dict = field(default_factory=dict)  # pseudo-label accuracy, sizes, hyper-parameters

    def scores(self, feats: Features) -> dict[str, np.ndarray]:
        """Every method's score (N,) for ``feats`` (needs ``image`` and ``preproj``); keys as :data:`METHODS`."""
        if feats.image is None or feats.preproj is None:
            raise ValueError(f"features of {feats.dataset} lack 'image' or 'preproj'; extract them with "
                             f"kinds=('image', 'preproj')")
        out = {"MCM": mcm(cosine_logits(feats.image, self.mcm_text), self.T_mcm)}
        for name, probe in (("PLP", self.plp), ("Linear probe", self.supervised)):
            for score, values in logit_scores(probe.logits(feats.preproj), self.T_probe).items():
                out[f"{name} · {score}"] = values
        out["kNN"] = knn_score(feats.image, self.bank, self.knn_k, device=self.device)
        out["Mahalanobis"] = mahalanobis_score(feats.preproj, self.maha)
        out["Rel. Mahalanobis"] = mahalanobis_score(feats.preproj, self.maha, relative=True)
        return out

    def accuracies(self, feats: Features) -> dict[str, float]:
        """Top-1 accuracy (%) on labelled ID ``feats`` of the zero-shot classifiers and both probes."""
        return {
            "zero-shot (MCM prompts)": 100 * accuracy(cosine_logits(feats.image, self.mcm_text), feats.labels),
            "zero-shot (pseudo-label prompts)": 100 * accuracy(cosine_logits(feats.image, self.pseudo_text),
                                                               feats.labels),
            "PLP probe": 100 * accuracy(self.plp.logits(feats.preproj), feats.labels),
            "linear probe": 100 * accuracy(self.supervised.logits(feats.preproj), feats.labels),
        }


def fit_detectors(loaded, train: Features, *, mcm_prompts: str | list[str] = "single",
                  pseudo_prompts: str | list[str] = "plp5", epochs: int = 100, batch_size: int = 256,
                  lr: float = 1e-3, weight_decay: float = 1e-3, seed: int = 42, knn_k: int = 1,
                  T_mcm: float = 1.0, T_probe: float = 1.0, covariance: str = "pooled",
                  device: str = "cpu") -> DetectorSuite:
    """Fit every detector on the ID training features ``train`` of ``loaded`` (a :class:`LoadedModel`)."""
    if train.image is None or train.preproj is None:
        raise ValueError(f"training features of {train.dataset} need kinds=('image', 'preproj')")
    names, c = train.class_names, len(train.class_names)
    mcm_text = text_features(loaded, names, get_prompts(mcm_prompts))
    pseudo_text = text_features(loaded, names, get_prompts(pseudo_prompts))
    pseudo = pseudo_labels(train.image, pseudo_text)
    hp = dict(num_classes=c, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
              device=device)
    plp = train_linear_probe(train.preproj, pseudo, **hp)
    supervised = train_linear_probe(train.preproj, train.labels, **hp)
    bank = train.image / np.linalg.norm(train.image, axis=1, keepdims=True)
    maha = fit_mahalanobis(train.preproj, train.labels, num_classes=c, covariance=covariance)
    info = {"train_images": len(train), "pseudo_label_accuracy": 100 * accuracy(pseudo, train.labels),
            "pseudo_label_classes_used": int(len(np.unique(pseudo))), **{k: v for k, v in hp.items() if k != "device"}}
    return DetectorSuite(mcm_text, pseudo_text, pseudo, plp, supervised, bank, maha, knn_k, T_mcm, T_probe, str(device),
                         info)


def detector_table(suite: DetectorSuite, id_feats: Features, ood: dict[str, Features], *, n_boot: int = 0,
                   seed: int = 0, fpr_method: str = "nearest") -> pd.DataFrame:
    """One row per (method, OOD set): ``method``, ``family``, ``ood``, AUROC / FPR95 / AUPR in %, CI bounds."""
    s_id = suite.scores(id_feats)
    rows = []
    for ood_name, feats in ood.items():
        s_ood = suite.scores(feats)
        for method, family in METHODS.items():
            row = ood_report(s_id[method], s_ood[method], n_boot=n_boot, seed=seed, fpr_method=fpr_method)
            rows.append({"method": method, "family": family, "ood": ood_name, **row})
    return pd.DataFrame(rows)
