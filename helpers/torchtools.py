"""Small torch pieces shared by the training and inference loops (pocket CLIP, fine-tuning, feature extraction).

- :func:`autocast`: mixed precision as an option — bf16 on CPU, fp16 on CUDA, a no-op when disabled;
- :func:`adamw_groups`: AdamW parameter groups that decay matrices but not biases, norms, scales or embeddings
  (CLIP's and open_clip's ``training/main.py`` rule);
- :func:`warmup_cosine`: a per-step schedule with a linear warm-up to the peak over ``warm`` steps, then cosine
  decay to 0 at ``total`` steps;
- :func:`frozen`: a block in which a module's parameters get no gradient except the ones being trained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch


def autocast(device: torch.device, enabled: bool):
    """A context manager running under bf16 (CPU) / fp16 (CUDA) autocast when ``enabled``, else doing nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def adamw_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices with ``weight_decay``; 1-d parameters and embeddings without."""
    decay, rest = [], []
    for name, p in named_parameters:
        (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warm: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler: factor ``(s + 1) / warm`` for the first ``warm`` steps, then ``½ (1 + cos(π t))``
    with ``t`` going from 0 to 1 over the remaining ``total - warm`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))


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
