"""Helpers behind the CLIP OOD-detection notebook series.

The data path is  dataset -> model -> cached features -> scores -> metrics -> tables/figures:

- :mod:`helpers.data`      dataset registry, mirror import, ImageFolder loading
- :mod:`helpers.models`    one factory for open_clip models, local checkpoints and the pocket CLIP
- :mod:`helpers.features`  cached image/text feature extraction (sharded under torchrun)
- :mod:`helpers.scores`    one module per OOD score family (pure functions, higher = more ID)
- :mod:`helpers.metrics`   AUROC / FPR95 / AUPR with explicit conventions and bootstrap CIs
- :mod:`helpers.report`    tables and figures written where the runner expects them
- :mod:`helpers.run`       papermill runner for the numbered notebooks
"""

__version__ = "0.1.0"
