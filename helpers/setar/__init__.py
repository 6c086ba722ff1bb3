"""SeTAR (Li et al., NeurIPS 2024): training-free selective low-rank approximation of CLIP's MLP up-projections.

- :mod:`helpers.setar.edit`     the edit (drop the smallest singular components) as a derived model;
- :mod:`helpers.setar.search`   the greedy search, naive (as published) and fast (same choices);
- :mod:`helpers.setar.finetune` SeTAR+FT (LoRA factors started from the dropped components) and plain LoRA;
- :mod:`helpers.setar.split`    the published search split (SeTAR's 1,000 listed ImageNet train images).
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
from .finetune import (
    CROP_SCALE,
    TrainImages,
    finetuned_model,
    lora_factors,
    setar_factors,
    setar_ft_start,
    train_images,
    train_updates,
    with_updates,
)
from .search import (
    SEARCH_BATCH,
    SearchResult,
    SearchSplit,
    fast_search,
    make_split,
    naive_search,
    objective,
    run_search,
)
from .split import published_files, published_source, published_split

__all__ = ["CROP_SCALE", "PUBLISHED", "PUBLISHED_B16", "RATIOS", "SEARCH_BATCH", "SVD", "SearchResult", "SearchSplit",
           "TrainImages", "dropped_rank", "edit_table", "fast_search", "finetuned_model", "lora_factors", "make_split",
           "n_blocks", "naive_search", "objective", "param_name", "published_files", "published_source",
           "published_split", "run_search", "setar_factors", "setar_ft_start", "setar_model", "svd_of", "train_images",
           "train_updates", "with_updates"]
