"""Linear probes on frozen CLIP features: pseudo-labels, :func:`train_linear_probe` (PLP and the supervised
linear probe, as published by Adaloglou et al., TMLR 2024). The detectors that score their logits are
:class:`helpers.detectors.PLP` and :class:`helpers.detectors.LinearProbe`."""

from .linear import LinearProbe, lr_schedule, pseudo_labels, standardization, train_linear_probe

__all__ = ["LinearProbe", "lr_schedule", "pseudo_labels", "standardization", "train_linear_probe"]
