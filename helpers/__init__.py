"""Helpers behind the CLIP OOD-detection notebook series.

The data path is  dataset -> model -> cached features -> detectors -> evaluate() -> long table -> views/figures:

- :mod:`helpers.data`        dataset registry, mirror import, ImageFolder loading, decoded image arrays
- :mod:`helpers.models`      one factory for open_clip models, local checkpoints and the pocket CLIP (its training
                             configs are ``pocket:<config>``); ``derive`` for fine-tuned, edited or prompt-learned models
- :mod:`helpers.features`    cached image/text feature extraction (sharded under torchrun)
- :mod:`helpers.benchmark`   a model + ID/OOD (+ training) sets as cached features
- :mod:`helpers.detectors`   one small torch class per OOD detector, a registry by name
- :mod:`helpers.evaluation`  ``evaluate()``: fit, score, measure; the canonical long table ``scores.csv``
- :mod:`helpers.metrics`     AUROC / FPR95 / AUPR with explicit conventions and bootstrap CIs
- :mod:`helpers.tables`      ``select`` rows by what they are, wide tables, paired claims; :mod:`helpers.views` every
                             named view of the long table a notebook shows; :mod:`helpers.plots` shared figures;
                             :mod:`helpers.summary`, :mod:`helpers.published` the series summary and the papers' numbers
- :mod:`helpers.training`    the one training loop (``fit``): every method is its parameters plus an objective
- notebook 02-03: :mod:`helpers.prompts`, :mod:`helpers.words` (NegLabel's lexicon), :mod:`helpers.probes` (PLP and
  linear probes), :mod:`helpers.families` (ID accuracy vs AUROC across models), :mod:`helpers.protocol`,
  :mod:`helpers.gap` (the modality gap)
- notebook 04: :mod:`helpers.finetune` (full fine-tuning, CoOp/LoCoOp, the few-shot protocol)
- notebook 05: :mod:`helpers.setar` (SeTAR's low-rank edits, their search, SeTAR+FT and LoRA)
- notebook 06: :mod:`helpers.finetune.cma` (FLYP and CMA's modality-gap regulariser)
- notebook 07: :mod:`helpers.adversarial` (feature-space attacks that make OOD images look ID)
- :mod:`helpers.cache`, :mod:`helpers.io`, :mod:`helpers.distributed`, :mod:`helpers.torchtools`, :mod:`helpers.decode`
                             keyed caches and atomic files, torchrun, AMP, image decoding
- :mod:`helpers.report`, :mod:`helpers.events`  tables and figures written where the runner expects them; warnings
- :mod:`helpers.run`, :mod:`helpers.profiles`, :mod:`helpers.site`  papermill runner for the numbered notebooks,
                             its run profiles (smoke / teaching / paper), the rendered course site
"""

__version__ = "0.2.0"

import os as _os

if _os.environ.get("CLIPOOD_EVENTS"):  # set by helpers.run for a notebook's kernel: report warnings to the runner
    from . import events as _events

    _events.install()
