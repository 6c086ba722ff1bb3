"""Models: one factory (:func:`load_model`) for open_clip architectures, local checkpoints and the pocket CLIP."""

from .factory import CONFIG_DIR, LoadedModel, load_model, split_spec

__all__ = ["CONFIG_DIR", "LoadedModel", "load_model", "split_spec"]
