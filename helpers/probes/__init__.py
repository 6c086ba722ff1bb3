"""Probes on frozen CLIP features and the detectors compared in notebook 03.

- :mod:`helpers.probes.linear`  pseudo-labels, :class:`LinearProbe`, :func:`train_linear_probe` (PLP and the
  supervised linear probe, as published by Adaloglou et al., TMLR 2024).
- :mod:`helpers.probes.compare` :func:`fit_detectors` (MCM, PLP, linear probe, kNN, Mahalanobis fitted on one
  ID training split) and :func:`detector_table` (AUROC / FPR95 per method and OOD set).
"""

from .compare import METHODS, DetectorSuite, detector_table, fit_detectors
from .linear import LinearProbe, lr_schedule, pseudo_labels, standardization, train_linear_probe

__all__ = ["LinearProbe", "lr_schedule", "pseudo_labels", "standardization", "train_linear_probe",
           "METHODS", "DetectorSuite", "detector_table", "fit_detectors"]
