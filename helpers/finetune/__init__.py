"""Adapting CLIP to the ID classes, each method returning something the series' score code can read.

- :mod:`helpers.finetune.fewshot` the few-shot protocol: seeded k-shot splits, evaluation subsets, mean ± std;
- :mod:`helpers.finetune.full`    full fine-tuning of the image tower with a head initialised from the class
  prompts (:func:`finetune_image_tower` -> a new :class:`~helpers.models.LoadedModel` + head);
- :mod:`helpers.finetune.coop`    prompt learning, CoOp, with LoCoOp's OOD-patch entropy term
  (:func:`train_coop` -> learned text features for MCM).

The linear probe and PLP live in :mod:`helpers.probes` (they need no fine-tuning of CLIP itself).
"""

from .coop import CoOpPrompts, PromptLearner, coop_lr, encode_token_embeddings, locoop_entropy, train_coop
from .fewshot import (
    eval_indices,
    eval_subset,
    kshot_indices,
    mean_std,
    mean_std_table,
    ood_rows,
    per_shots,
    shots_label,
    split_union,
    subset_features,
)
from .full import FineTuned, ZeroShotHead, finetune_image_tower, mix_batch, weight_change

__all__ = [
    "CoOpPrompts", "FineTuned", "PromptLearner", "ZeroShotHead", "coop_lr", "encode_token_embeddings",
    "eval_indices", "eval_subset", "finetune_image_tower", "kshot_indices", "locoop_entropy", "mean_std", "mean_std_table", "mix_batch",
    "ood_rows", "per_shots", "shots_label", "split_union", "subset_features", "train_coop", "weight_change",
]
