"""SeTAR (Li et al., NeurIPS 2024): training-free selective low-rank approximation of CLIP's MLP up-projections.

- :mod:`helpers.setar.edit`     the edit (drop the smallest singular components) as a derived model;
- :mod:`helpers.setar.search`   the greedy search, naive (as published) and fast (same choices);
- :mod:`helpers.setar.finetune` SeTAR+FT (LoRA factors started from the dropped components) and plain LoRA.
"""

from .edit import (
    PUBLISHED,
    PUBLISHED_B16,
    RATIOS,
    SVD,
    dropped_rank,
    edit_table,
    n_blocks,
    param_name,
    setar_model,
    svd_of,
)
from .finetune import finetuned_model, lora_factors, setar_factors, train_updates, with_updates
from .search import SearchResult, SearchSplit, fast_search, make_split, naive_search, objective, run_search

__all__ = ["PUBLISHED", "PUBLISHED_B16", "RATIOS", "SVD", "SearchResult", "SearchSplit", "dropped_rank", "edit_table", "fast_search",
           "finetuned_model", "lora_factors", "make_split", "n_blocks", "naive_search", "objective", "param_name",
           "run_search", "setar_factors", "setar_model", "svd_of", "train_updates", "with_updates"]
