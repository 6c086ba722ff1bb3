"""Models: one factory (:func:`load_model`) for open_clip architectures, local checkpoints and the pocket CLIP;
:func:`derive` for models made from another (fine-tuned towers, edited weights, learned prompts)."""

from .factory import CONFIG_DIR, LoadedModel, derive, load_model, split_spec

__all__ = ["CONFIG_DIR", "LoadedModel", "derive", "load_model", "split_spec"]
