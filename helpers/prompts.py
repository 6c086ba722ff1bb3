"""Prompt sets as data. Templates are format strings with one ``{}`` for the class name.

- ``single``   MCM / SeTAR: ``a photo of a {}`` (no period), one prompt.
- ``plp5``     PLP's 5-prompt ensemble (embeddings normalised, averaged, normalised again).
- ``openai80`` CLIP's 80 ImageNet templates as shipped by ``open_clip.zero_shot_metadata`` (OpenOOD uses them).
- ``nice``     NegLabel / CMA: ``the nice {}``.
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

PROMPT_SETS: dict[str, list[str]] = {
    "single": ["a photo of a {}"],
    "plp5": ["a photo of a {}.", "a blurry photo of a {}.", "a photo of many {}.", "a photo of the large {}.",
             "a photo of the small {}."],
    "openai80": [t("{}") for t in OPENAI_IMAGENET_TEMPLATES],
    "nice": ["the nice {}"],
}


def get_prompts(name_or_templates: str | list[str]) -> list[str]:
    """A registered prompt set by name, or a list of templates passed through (each must contain ``{}``)."""
    templates = PROMPT_SETS.get(name_or_templates) if isinstance(name_or_templates, str) else list(name_or_templates)
    if templates is None:
        raise KeyError(f"unknown prompt set {name_or_templates!r}; known: {sorted(PROMPT_SETS)}")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates must contain exactly one '{{}}': {bad[:3]}")
    return templates
