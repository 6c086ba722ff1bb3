"""Adapting CLIP to the ID classes; each method returns a derived model (:func:`helpers.models.derive`) that
the evaluation core scores like any other.

- :mod:`helpers.finetune.fewshot` the few-shot protocol: seeded k-shot splits, one function per method that
  trains and evaluates it for every (shots, seed);
- :mod:`helpers.finetune.full`    full fine-tuning of the image tower with a head initialised from the class
  prompts (:func:`finetune_image_tower` -> a derived model with a new image tower and a head; cached);
- :mod:`helpers.finetune.coop`    prompt learning, CoOp, with LoCoOp's OOD-patch entropy term
  (:func:`coop_model` -> a derived model with learned class prompts; cached);
- :mod:`helpers.finetune.cma`     both towers fine-tuned with CLIP's contrastive loss (FLYP) and CMA's
  modality-gap regulariser (:func:`contrastive_finetune` -> a derived model; cached).

The linear probe and PLP live in :mod:`helpers.probes` (they need no fine-tuning of CLIP itself).
"""

from .cma import LAMBDA_CMA, CMARuns, cma_experiment, cma_loss, contrastive_finetune, method_name
from .coop import (
    CoOpPrompts,
    PromptLearner,
    coop_lr,
    coop_model,
    encode_token_embeddings,
    locoop_entropy,
    train_coop,
)
from .fewshot import (
    coop_runs,
    finetune_runs,
    kshot_indices,
    kshot_splits,
    per_shots,
    probe_runs,
    shots_label,
    split_union,
)
from .full import (
    FineTuned,
    ZeroShotHead,
    finetune_image_tower,
    mix_batch,
    weight_change,
    weight_change_by_block,
)

__all__ = [
    "CMARuns", "LAMBDA_CMA", "cma_experiment", "cma_loss", "contrastive_finetune", "method_name",
    "CoOpPrompts", "FineTuned", "PromptLearner", "ZeroShotHead", "coop_lr", "coop_model", "coop_runs",
    "encode_token_embeddings", "finetune_image_tower", "finetune_runs", "kshot_indices", "kshot_splits",
    "locoop_entropy", "mix_batch", "per_shots", "probe_runs", "shots_label", "split_union", "train_coop",
    "weight_change", "weight_change_by_block",
]
