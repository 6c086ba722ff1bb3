"""Small torch pieces shared by the training loop (:mod:`helpers.training`), attacks and feature extraction.

- :func:`autocast`: mixed precision as an option — bf16 on CPU, fp16 on CUDA, a no-op when disabled; ``"auto"``
  turns it on where it is fast (:func:`amp_precision`);
- :func:`adamw_groups`: AdamW parameter groups that decay matrices but not biases, norms, scales or embeddings
  (CLIP's and open_clip's ``training/main.py`` rule);
- :func:`normalize_of`, :func:`image_size`: what an open_clip model's preprocessing normalises with, and its input
  size;
- :func:`frozen`: a block in which a module's parameters get no gradient except the ones being trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (oneDNN's check: AVX512-BF16, AMX...). Where it
    does not, bf16 autocast is emulated and far slower than fp32 (measured on a 2-core AMD EPYC without AVX-512: one
    training step of ``pocket-vit-s`` on 128 images took 6.6 s under bf16 autocast against 0.3 s in fp32)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_precision(device: torch.device | str, amp: bool | str) -> str:
    """The precision an ``amp`` option means on ``device``: ``"fp32"``, ``"bf16"`` (CPU autocast) or ``"fp16"``
    (CUDA autocast). ``True`` / ``False`` force autocast on / off; ``"auto"`` uses it on CUDA and on a CPU with
    native bf16 (:func:`native_bf16`), fp32 elsewhere. Caches of trained weights are keyed by the result, since the
    two precisions train different weights."""
    device = torch.device(device)
    if amp == "auto":
        amp = device.type == "cuda" or (device.type == "cpu" and native_bf16())
    if not isinstance(amp, bool):
        raise ValueError(f"amp={amp!r}: expected True, False or 'auto'")
    return "fp32" if not amp else ("bf16" if device.type == "cpu" else "fp16")


def autocast(device: torch.device, amp: bool | str):
    """A context manager running under bf16 (CPU) / fp16 (CUDA) autocast when ``amp`` asks for it (``True``, or
    ``"auto"`` where it is fast: :func:`amp_precision`), else doing nothing."""
    precision = amp_precision(device, amp)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def adamw_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices with ``weight_decay``; 1-d parameters and embeddings without."""
    decay, rest = [], []
    for name, p in named_parameters:
        (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def normalize_of(preprocess):
    """The ``transforms.Normalize`` step of an open_clip preprocessing pipeline (its mean and std)."""
    from torchvision import transforms

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, transforms.Normalize):
            return t
    raise ValueError(f"the model's preprocessing has no Normalize step to copy: {preprocess}")


def image_size(visual: torch.nn.Module) -> int:
    """The side of the square images an open_clip image tower takes."""
    size = visual.image_size
    return size[0] if isinstance(size, tuple | list) else int(size)


@contextlib.contextmanager
def frozen(module: torch.nn.Module, trainable: Iterable[torch.nn.Parameter] = ()) -> Iterator[torch.nn.Module]:
    """Inside the block ``module``'s parameters do not require gradients, except ``trainable`` (which need not belong
    to ``module``); on leaving it, also by an exception, every flag is what it was before. For training a few
    tensors (prompts, low-rank updates, an attack's perturbation) on a model whose weights are shared with others:
    no ``.grad`` is computed or left on the shared weights, and they are not frozen for good. Yields ``module``."""
    trainable = list(trainable)
    params = list({id(p): p for p in [*module.parameters(), *trainable]}.values())
    flags = [p.requires_grad for p in params]
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        yield module
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
