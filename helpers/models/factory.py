"""One door for every model: ``load_model(spec)`` returns a :class:`LoadedModel`.

Accepted specs (all go through ``open_clip.create_model_and_transforms``):

- ``"ViT-B-16/openai"`` or ``load_model("ViT-B-16", "openai")``: an open_clip architecture and pretrained tag;
- ``load_model("ViT-B-16", "/path/weights.safetensors")``: an architecture and a local checkpoint file;
- ``load_model("ViT-B-32", "random")``: random weights, seeded (benchmarks and tests);
- ``"pocket:teaching"`` (or ``"pocket:smoke"``): the package's own small CLIP, trained on the mirrored data
  on first use and cached; then loaded from its checkpoint file like any other local checkpoint.

Checkpoints load with ``weights_only=True`` (or from safetensors): loading never executes code.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..errors import UnknownModelError, WeightsUnavailableError
from ..io import sha256_file

CONFIG_DIR = Path(__file__).with_name("configs")
open_clip.add_model_config(CONFIG_DIR)  # registers pocket-vit-* like any built-in architecture


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Any  # PIL image -> tensor (C, H, W)
    tokenizer: Any  # list[str] -> LongTensor (N, context_length)
    model_id: str  # what identifies the weights, e.g. "ViT-B-16/openai" or "pocket-vit-s/sha256:ab12..."
    arch: str
    pretrained: str | None
    checkpoint_sha256: str | None
    device: torch.device
    precision: str
    interpolation: str
    info: dict = field(default_factory=dict)  # e.g. the pocket CLIP's training report

    @property
    def transform_id(self) -> str:
        """Text that changes whenever the preprocessing changes (part of every feature-cache key)."""
        return " ".join(repr(self.preprocess).split())


def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        raise UnknownModelError(
            f"Unknown open_clip architecture {arch!r}. Close matches: {close or 'none'}. "
            f"See open_clip.list_models() for all {len(open_clip.list_models())} architectures."
        )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(str(pretrained))


def split_spec(spec: str, pretrained: str | None = None) -> tuple[str, str | None]:
    """``"ViT-B-16/openai"`` -> ``("ViT-B-16", "openai")``; an explicit ``pretrained`` wins."""
    if pretrained is None and "/" in spec and not spec.startswith(("hf-hub:", "local-dir:")):
        arch, pretrained = spec.split("/", 1)
        return arch, pretrained
    return spec, pretrained


def load_model(
    spec: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    interpolation: str | None = None,
    resize_mode: str | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    image_size: int | None = None,
    context_length: int | None = None,
) -> LoadedModel:
    """Create a model, its preprocessing transform and tokenizer; see the module docstring for ``spec``.

    ``interpolation`` (``"bicubic"``, open_clip's default, or ``"bilinear"`` as in MCM's code) and
    ``resize_mode`` override the preprocessing; ``precision`` is open_clip's (``fp32``, ``bf16``, ``fp16``,
    ``amp``...). ``seed`` fixes random initialisation when no weights are loaded.
    ``image_size`` / ``context_length`` override the architecture's input size and text length (open_clip's
    ``force_image_size`` / ``force_context_length``; tests use them to run ``ViT-B-16`` on tiny inputs); both
    become part of ``model_id``.
    """
    if spec == "pocket" or spec.startswith("pocket:"):
        from .pocket import pocket_checkpoint

        _, _, profile = spec.partition(":")
        arch, ckpt, info = pocket_checkpoint(profile or "teaching", device=device)
        loaded = load_model(arch, str(ckpt), device=device, precision=precision, interpolation=interpolation,
                            resize_mode=resize_mode, seed=seed, image_size=image_size, context_length=context_length)
        loaded.info = info
        return loaded

    arch, pretrained = split_spec(spec, pretrained)
    _check_arch(arch)
    device = torch.device(device)
    random_init = pretrained in (None, "", "random", "none")
    if not random_init and not _is_local_file(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            looks_like_path = os.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors"))
            hint = (f"the checkpoint file {pretrained} does not exist" if looks_like_path
                    else f"known tags for {arch}: {tags or 'none'}; close matches: "
                         f"{difflib.get_close_matches(str(pretrained), tags, n=3, cutoff=0.4) or 'none'}")
            raise UnknownModelError(f"Unknown pretrained weights {pretrained!r} for {arch!r}: {hint}.")
    torch.manual_seed(seed)
    kwargs = dict(precision=precision, device=device, image_interpolation=interpolation,
                  image_resize_mode=resize_mode, cache_dir=cache_dir, weights_only=True,
                  force_image_size=image_size, force_context_length=context_length)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, None if random_init else pretrained, **kwargs)
    except RuntimeError as e:
        if "download" in str(e).lower() or "offline" in str(e).lower() or "connect" in str(e).lower():
            raise WeightsUnavailableError(
                f"Weights {arch}/{pretrained} are not in the local cache and cannot be downloaded here ({e}). "
                f"Fix: on a machine with internet run `python -c \"import open_clip; "
                f"open_clip.create_model_and_transforms('{arch}', '{pretrained}')\"` and copy the Hugging Face "
                f"cache (~/.cache/huggingface) here, or pass the checkpoint file as pretrained."
            ) from e
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch, context_length=context_length)
    if random_init:
        model_id, sha = f"{arch}/random-seed{seed}", None
    elif _is_local_file(pretrained):
        sha = sha256_file(pretrained)
        model_id = f"{arch}/sha256:{sha[:16]}"
    else:
        model_id, sha = f"{arch}/{pretrained}", None
    # a forced size changes the weights' shapes (and the random draws): it must change every cache key
    model_id += (f"-img{image_size}" if image_size else "") + (f"-ctx{context_length}" if context_length else "")
    interp = interpolation or getattr(model, "pretrained_cfg", {}).get("interpolation", "bicubic") or "bicubic"
    return LoadedModel(model, preprocess, tokenizer, model_id, arch, None if random_init else str(pretrained), sha,
                       device, precision, interp)
