r"""Linear probes on frozen CLIP features: pseudo-label probing (PLP) and the supervised linear probe.

Paper: Adaloglou, Michels, Kaiser, Kollmann. *Adapting Contrastive Language-Image Pretrained (CLIP) Models for
Out-of-Distribution Detection*, TMLR 2024. Reference code: ``HHU-MMBS/plp-official-tmlr2024``,
``linear_probing.py`` (``clip_pseudo_probs``, ``train_head``, ``get_optimizer``), ``utils.py``
(``cosine_scheduler_iter``), ``gen_embeds.py`` (train mean/std of the embeddings).

**Pseudo-labels.** No ID labels are used: each *training* image gets the class whose prompt-ensemble text
embedding is closest, $\tilde y_i = \arg\max_k \hat x_i^\top \hat t_k$, with $\hat x_i$ the normalised
post-projection image embedding and $\hat t_k$ the normalised mean of the normalised embeddings of 5 prompts
(``helpers.prompts.PROMPT_SETS["plp5"]``).

**Probe.** A linear layer $z = W \frac{f - m}{s} + b$ on the *pre-projection* features $f$ (visual ``proj``
removed, after ``ln_post``), standardised per dimension with the training mean $m$ and (unbiased) standard
deviation $s$, trained with cross-entropy on $\tilde y$ (PLP) or on the true labels (supervised linear probe).
Its logits are then scored by the ``plp`` / ``linear_probe`` detectors (:mod:`helpers.detectors.probe`: MSP,
energy, L1 at T = 1).

Hyper-parameters (published defaults): Adam, ``weight_decay=1e-3`` (Adam's coupled L2), ``epochs=100``,
``batch_size=256`` for CIFAR (8192 for ImageNet), ``seed=42``, learning rate per step on a cosine schedule to 0
with a linear warm-up from 0 over the first ``warmup=0.1`` of the steps. Peak learning rate ``lr=1e-3``: the
reference code scales its ``--lr 1e-3`` by ``batch_size / 256``, which is 1e-3 at CIFAR's batch 256 (pass
``lr=1e-3 * batch_size / 256`` to reproduce the scaling at other batch sizes). As in the reference, each epoch
is one pass over a fresh random permutation, and the last, smaller batch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..training import Batches, fit


@dataclass
class LinearProbe:
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,) train mean used for standardisation (zeros if standardize=False)
    std: np.ndarray  # (D,) train std (ones if standardize=False)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits (N, C) of ``features`` (N, D), standardised with the *training* mean and std first."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features must be (N, {self.weight.shape[1]}) like the probe's training features, "
                             f"got {x.shape}; use the same feature kind (e.g. Features.preproj)")
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class (N,) of ``features`` (N, D)."""
        return self.logits(features).argmax(1)


def pseudo_labels(image_features: np.ndarray, text_features: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """``argmax_k cos(image_i, text_k)`` (N,) for image (N, D) and text (C, D) embeddings (both re-normalised).

    Computed ``chunk_size`` images at a time, so ImageNet's 1.28M x 1000 cosines never sit in memory at once.
    """
    img, txt = np.asarray(image_features), np.asarray(text_features, dtype=np.float64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"image features (N, D) and text features (C, D) must share D; got {img.shape} and "
                         f"{txt.shape} (pseudo-labels use post-projection image embeddings, Features.image)")
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    out = []
    for i in range(0, len(img), chunk_size):
        x = np.asarray(img[i:i + chunk_size], dtype=np.float64)
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True) @ txt.T).argmax(1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def lr_schedule(total_steps: int, lr: float, warmup: float) -> np.ndarray:
    """Learning rate of every step (total_steps,): linear warm-up from 0, then cosine decay to 0 (PLP's)."""
    warm = int(total_steps * warmup)
    ramp = np.linspace(0.0, lr, warm)
    rest = np.arange(total_steps - warm)
    cosine = 0.5 * lr * (1 + np.cos(np.pi * rest / max(1, len(rest))))
    return np.concatenate([ramp, cosine])


def standardization(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and unbiased std (D,) of training ``features`` (N, D); a constant dimension gets std 1."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(0)
    std = x.std(0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
    std = np.where(std > 0, std, 1.0)  # a constant feature carries no information; avoid dividing by 0
    return mean.astype(np.float32), std.astype(np.float32)


def _check(features, labels, num_classes) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be N={len(x)} integers, got shape {y.shape} and dtype {y.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN/inf; check the feature extraction (e.g. run without amp)")
    c = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, num_classes={c}), got values in [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64), c


def train_linear_probe(features: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                       epochs: int = 100, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-3,
                       warmup: float = 0.1, seed: int = 42, standardize: bool = True,
                       device: str | torch.device = "cpu") -> LinearProbe:
    """Train a linear probe on ``features`` (N, D) with integer ``labels`` (N,); see the module docstring.

    Deterministic for a ``seed`` (initialisation and batch order) on a given machine. ``device="cuda"`` trains
    on a GPU (ImageNet-sized feature sets); the global torch RNG is left untouched.
    """
    x, y, c = _check(features, labels, num_classes)
    if epochs < 1 or batch_size < 1 or not 0 <= warmup < 1:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and 0 <= warmup < 1; got {epochs}, {batch_size}, "
                         f"{warmup}")
    mean, std = standardization(x) if standardize else (np.zeros(x.shape[1], np.float32),
                                                       np.ones(x.shape[1], np.float32))
    xs = torch.from_numpy((x - mean) / std).to(device)
    ys = torch.from_numpy(y).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(x.shape[1], c).to(device)  # PyTorch's default initialisation, seeded
    batches = Batches(len(x), batch_size, keep_last=True)
    schedule = lr_schedule(epochs * batches.per_epoch, lr, warmup)

    def objective(probe, idx, ctx):
        idx = idx.to(device)
        return F.cross_entropy(probe(xs[idx]), ys[idx]), {}

    # the optimiser's lr is 1, so the schedule's factor is the learning rate itself (PLP's per-step values)
    fit(layer, layer.parameters(), objective, batches, optimizer=lambda p: torch.optim.Adam(p, lr=1.0,
                                                                                           weight_decay=weight_decay),
        schedule=lambda s, total: float(schedule[s]), epochs=epochs, device=device, seed=seed)
    return LinearProbe(layer.weight.detach().cpu().numpy().copy(), layer.bias.detach().cpu().numpy().copy(),
                       mean, std)
