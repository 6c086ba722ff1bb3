"""Helpers behind the CLIP OOD-detection notebook series.

The data path is  dataset -> model -> cached features -> detectors -> evaluate() -> long table -> views/figures:

- :mod:`helpers.data`        dataset registry, mirror import, ImageFolder loading
- :mod:`helpers.models`      one factory for open_clip models, local checkpoints and the pocket CLIP;
                             ``derive`` for fine-tuned, edited or prompt-learned models
- :mod:`helpers.features`    cached image/text feature extraction (sharded under torchrun)
- :mod:`helpers.benchmark`   a model + ID/OOD (+ training) sets as cached features
- :mod:`helpers.detectors`   one small torch class per OOD detector, a registry by name
- :mod:`helpers.evaluation`  ``evaluate()``: fit, score, measure; the canonical long table ``scores.csv``
- :mod:`helpers.metrics`     AUROC / FPR95 / AUPR with explicit conventions and bootstrap CIs
- :mod:`helpers.tables`      views of the long table, paired claims; :mod:`helpers.plots` shared figures
- :mod:`helpers.probes`, :mod:`helpers.finetune`, :mod:`helpers.families`, :mod:`helpers.protocol`,
  :mod:`helpers.gap`         the experiments of notebooks 02-04
- :mod:`helpers.cache`       code hashes and the cache of trained artifacts
- :mod:`helpers.report`      tables and figures written where the runner expects them
- :mod:`helpers.run`         papermill runner for the numbered notebooks
"""

__version__ = "0.2.0"

import os as _os

if _os.environ.get("CLIPOOD_EVENTS"):  # set by helpers.run for a notebook's kernel: report warnings to the runner
    from . import events as _events

    _events.install()
