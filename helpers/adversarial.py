r"""Feature-space adversarial OOD images: an OOD image nudged until the frozen image encoder sees an ID image.

PLP (Adaloglou et al., TMLR 2024, ``HHU-MMBS/plp-official-tmlr2024``
``notebooks/clip-ood-adversarial-examples.ipynb``) shows that feature-based OOD detectors can be fooled with
imperceptible changes. For a source OOD image $x \in [0, 1]^{3 \times H \times W}$ and a target ID image
$x_t$ (from the ID training images that the feature-space detectors keep as their memory bank), a perturbation
$\delta$ minimises

.. math::

    \mathcal L(\delta) = -\cos\big(f(n(x + \delta)),\ f(n(x_t))\big) + \lambda\,\mathrm{TV}^2(\delta),
    \qquad \mathrm{TV}^2(\delta) = \overline{(\partial_y \delta)^2} + \overline{(\partial_x \delta)^2},

with $f$ the frozen image encoder, $n$ the model's normalisation applied *after* $\delta$, and the finite
differences zero-padded at the last row / column (torchmetrics' ``image_gradients``, which PLP uses, so each mean
divides by $H \cdot W$). $\delta$ starts at $10^{-3}\,\mathcal N(0, 1)$; after every Adam step (lr $10^{-3}$,
250 steps, batch 16) $x + \delta$ is clamped to $[0, 1]$. $\lambda = 5\cdot10^3$ gives "smooth" perturbations,
$\lambda = 0$ "patchy" ones; there is no $\epsilon$-ball. Published pairs: 1,000 (CIFAR-10 test source,
CIFAR-100 train target) pairs drawn with seed 0, ViT-bigG-14.

**Feature space.** PLP's $f$ is the visual tower with its projection removed (``build_openclip_visual`` in
``model_builders/openclip.py`` sets ``visual.proj = None``): the pooled token after ``ln_post``, not standardised,
which :mod:`helpers.features` calls ``"preproj"`` (``feature="preproj"``, the default here). Its detector is the
1-NN cosine to the stored training features of the same space (``OOD_classifier_knn(..., k=1, metric="cos-sim")``
with ``args=None``: no standardisation), i.e. ``{"name": "knn", "feature": "preproj", "standardize": False}``.
``feature="image"`` attacks the normalised CLIP embedding after the projection instead.

**Pairs** (:func:`pairs`). After ``fix_random_seeds(0)`` the official notebook draws, with numpy's global legacy
generator and *with* replacement, ``np.random.choice(len(train), N)`` target rows, then ``N`` ID test rows, then
``N`` source rows, and pairs them in draw order (``draw="official"``).

Extensions here, off by default: ``eps`` bounds $\lVert\delta\rVert_\infty$, and :func:`score_attack` ascends a
detector's own score (differentiable since the detectors are torch) instead of a target's feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .features import Features, encode_images
from .models import LoadedModel
from .torchtools import frozen

SMOOTH, PATCHY = 5e3, 0.0  # published λ


def tv2(delta: torch.Tensor) -> torch.Tensor:
    """PLP's smoothness penalty of ``delta`` (B, C, H, W): mean squared vertical plus mean squared horizontal
    finite difference, each zero-padded to the full size (so divided by ``B·C·H·W``)."""
    dy = delta[..., 1:, :] - delta[..., :-1, :]
    dx = delta[..., :, 1:] - delta[..., :, :-1]
    return (dy.square().sum() + dx.square().sum()) / delta.numel()


def attack_loss(adv: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, lam: float) -> torch.Tensor:
    """``−mean cos(adv, target) + lam · tv2(delta)`` for features (B, D) and the perturbation (B, C, H, W)."""
    return -F.cosine_similarity(adv, target, dim=-1).mean() + lam * tv2(delta)


def _normalizer(loaded: LoadedModel):
    from .torchtools import normalize_of

    norm = normalize_of(loaded.preprocess)
    mean = torch.tensor(norm.mean, device=loaded.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=loaded.device).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


def embed(loaded: LoadedModel, x01: torch.Tensor, feature: str = "image") -> torch.Tensor:
    """The ``feature`` of images in [0, 1] (B, 3, H, W) at the model's input size, differentiable in ``x01``:
    ``"image"`` the normalised CLIP embedding, ``"preproj"`` the visual tower's output with its projection removed
    (open_clip's ``model.visual`` with ``proj = None``; PLP's feature space, not normalised)."""
    return encode_images(loaded.model.visual, _normalizer(loaded)(x01.to(loaded.device)), (feature,))[feature]


@dataclass
class Attack:
    """Manipulated images (N, 3, H, W) in [0, 1] (``snapshots[step]`` after that many steps, the last one is
    ``images``), the mean cosine to the targets after every step, and the settings."""

    images: torch.Tensor
    snapshots: dict = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict = field(default_factory=dict)


def _perturb(x: torch.Tensor, loss_of, *, steps: int, lr: float, init: float, eps: float | None,
             gen: torch.Generator, after_step=None) -> torch.Tensor:
    """Adam on a perturbation δ of images ``x`` in [0, 1]: δ starts at ``init``·N(0, 1), ``loss_of(δ, step)`` is
    minimised, and after every step x + δ is clamped to [0, 1] (and δ to [−ε, ε] when ``eps``);
    ``after_step(step, x + δ)`` sees the images after each step. Returns x + δ."""
    delta = (init * torch.randn(x.shape, generator=gen)).to(x.device)
    delta = torch.maximum(torch.minimum(delta, 1 - x), -x).requires_grad_()
    opt = torch.optim.Adam([delta], lr=lr)
    for step in range(steps):
        loss = loss_of(delta, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if eps is not None:
                delta.clamp_(-eps, eps)
            delta.copy_(torch.maximum(torch.minimum(delta, 1 - x), -x))
        if after_step is not None:
            after_step(step + 1, (x + delta).detach())
    return (x + delta).detach()


def feature_attack(loaded: LoadedModel, sources: torch.Tensor, targets: torch.Tensor, *, lam: float = SMOOTH,
                   steps: int = 250, lr: float = 1e-3, init: float = 1e-3, batch_size: int = 16,
                   eps: float | None = None, feature: str = "preproj", seed: int = 0, snapshots=(),
                   progress: bool = False) -> Attack:
    """PLP's attack (module docstring): move each source image (N, 3, H, W) in [0, 1] towards the feature of
    its target image. The encoder's weights are not changed and get no gradient. ``feature``: the feature space of
    the cosine (:func:`embed`; ``"preproj"`` is PLP's). ``snapshots``: steps after which the images are also kept
    (for AUROC against the number of steps)."""
    from tqdm.auto import tqdm

    if sources.shape != targets.shape:
        raise ValueError(f"sources {tuple(sources.shape)} and targets {tuple(targets.shape)} must pair one to one")
    gen = torch.Generator().manual_seed(seed)
    keep = {int(s) for s in snapshots if 0 < int(s) < steps}
    outs, snaps, cos_sum = [], {s: [] for s in sorted(keep)}, np.zeros(steps + 1)

    def cos_of(adv, tgt):
        return F.cosine_similarity(adv.detach(), tgt, dim=-1).sum().item()

    with frozen(loaded.model.visual):
        for i in tqdm(range(0, len(sources), batch_size), desc=f"attack (λ={lam:g})", disable=not progress):
            x = sources[i:i + batch_size].to(loaded.device, torch.float32)
            with torch.no_grad():
                tgt = embed(loaded, targets[i:i + batch_size].float(), feature)

            def loss_of(delta, step, x=x, tgt=tgt):
                adv = embed(loaded, x + delta, feature)
                cos_sum[step] += cos_of(adv, tgt)  # the cosine before this step's update
                return attack_loss(adv, tgt, delta, lam)

            def after_step(step, images):
                if step in keep:
                    snaps[step].append(images.cpu())

            adv = _perturb(x, loss_of, steps=steps, lr=lr, init=init, eps=eps, gen=gen, after_step=after_step)
            with torch.no_grad():
                cos_sum[steps] += cos_of(embed(loaded, adv, feature), tgt)
            outs.append(adv.cpu())
    history = pd.DataFrame({"step": np.arange(steps + 1), "cos to target": cos_sum / len(sources)})
    settings = {"lam": lam, "steps": steps, "lr": lr, "init": init, "batch_size": batch_size, "eps": eps,
                "feature": feature, "seed": seed}
    return Attack(torch.cat(outs), {s: torch.cat(v) for s, v in snaps.items()}, history, settings)


def decoded(loaded: LoadedModel, ds) -> torch.Tensor:
    """A dataset's images (N, 3, H, W) in [0, 1] at the model's input size, resized as its preprocessing does
    (:func:`helpers.data.arrays.decoded_images`, cached)."""
    from .data.arrays import decoded_images
    from .torchtools import image_size

    size = image_size(loaded.model.visual)
    return torch.from_numpy(decoded_images(ds, size, progress=False)).permute(0, 3, 1, 2).float().div(255)


def cached_attack(loaded: LoadedModel, sources, targets, *, use_cache: bool = True, **kwargs) -> Attack:
    """:func:`feature_attack` on two :class:`helpers.data.ImageFolderDataset` of equal length (decoded at the
    model's input size, as its preprocessing does), cached by the image tower, both image lists, every setting
    (defaults included: the feature space, λ, steps ...) and the attack code."""
    import inspect

    from .cache import cached_tensors, code_hash
    from .data.arrays import decoded_images
    from .torchtools import image_size

    size = image_size(loaded.model.visual)
    bound = inspect.signature(feature_attack).bind(loaded, None, None, **kwargs)
    bound.apply_defaults()
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()
                if k not in ("loaded", "sources", "targets", "progress")}
    key = {"model": loaded.image_id, "sources": sources.content_fingerprint(), "targets": targets.content_fingerprint(),
           "size": size, **settings,
           "code": code_hash(feature_attack, _perturb, attack_loss, tv2, embed, _normalizer, encode_images, decoded,
                             decoded_images)}

    def build():
        a = feature_attack(loaded, decoded(loaded, sources), decoded(loaded, targets), **kwargs)
        tensors = {"images": a.images, **{f"snapshot.{k}": v for k, v in a.snapshots.items()}}
        return tensors, {"history": a.history.to_dict("list"), "settings": a.settings}

    tensors, info, _ = cached_tensors("adversarial", loaded.image_id, key, build, use_cache=use_cache)
    snaps = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("snapshot.")}
    history = pd.DataFrame(info["history"], columns=["step", "cos to target"])  # the JSON sorts the keys
    return Attack(tensors["images"], dict(sorted(snaps.items())), history, info["settings"])


def features_of(loaded: LoadedModel, images: torch.Tensor, name: str, kinds=("image",),
                batch_size: int = 256) -> Features:
    """:class:`helpers.features.Features` of images in [0, 1] (N, 3, H, W) under ``loaded`` (an OOD set for
    :func:`helpers.evaluation.evaluate`; labels −1)."""
    parts: dict[str, list] = {k: [] for k in kinds}
    norm = _normalizer(loaded)
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = encode_images(loaded.model.visual, norm(images[i:i + batch_size].to(loaded.device).float()),
                                tuple(kinds))
            for k in kinds:
                parts[k].append(out[k].cpu().numpy())
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if "local" in arrays:
        arrays["local"] = arrays["local"].astype(np.float16)
    return Features(name, loaded.image_id, np.full(len(images), -1), [f"{name}/{i:05d}" for i in range(len(images))],
                    [], [], **arrays)


def score_attack(loaded: LoadedModel, detector, sources: torch.Tensor, *, steps: int = 250, lr: float = 1e-3,
                 init: float = 1e-3, batch_size: int = 16, eps: float | None = None, seed: int = 0) -> torch.Tensor:
    """Our extension: ascend a fitted detector's own score (higher = more ID) on the source images, within the
    same [0, 1] (and optional ε) constraints; returns the manipulated images. The detector must score the
    ``image`` feature (MCM, max-logit, energy, kNN on embeddings, Mahalanobis ...)."""
    gen = torch.Generator().manual_seed(seed)
    outs = []
    with frozen(loaded.model.visual):
        for i in range(0, len(sources), batch_size):
            x = sources[i:i + batch_size].to(loaded.device, torch.float32)

            def loss_of(delta, step, x=x):
                return -detector.score(image=embed(loaded, x + delta, "image").double()).mean()

            outs.append(_perturb(x, loss_of, steps=steps, lr=lr, init=init, eps=eps, gen=gen).cpu())
    return torch.cat(outs)


def with_ood_images(bench, images: dict, kinds=None, keep: bool = False):
    """``bench`` with ``images`` ({name: (N, 3, H, W) in [0, 1]}) as its OOD sets, encoded by its model (``kinds``:
    default the ID set's feature kinds), after its own OOD sets when ``keep``; the ID set and the training split
    are kept."""
    import dataclasses

    kinds = kinds or tuple(k for k in ("image", "preproj", "local") if getattr(bench.id, k) is not None)
    new = {name: features_of(bench.model, x, name, kinds) for name, x in images.items()}
    ood = {**(bench.ood if keep else {}), **new}
    return dataclasses.replace(bench, ood=ood, datasets={bench.id_name: bench.datasets[bench.id_name]})


def attack_sets(source: str, real: torch.Tensor | None, attacks: list[Attack], by_step: bool = False
                ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The OOD image sets of an attack experiment on images of the dataset ``source``, and their factor columns
    for :func:`helpers.evaluation.evaluate` (``factors=``): the ``real`` images (``attack="none"``, 0 steps; None
    leaves them out) and each attack's final images (``attack``: ``"smooth"`` when its λ > 0, else ``"patchy"``;
    ``eps_255`` its L∞ bound, when it had one); ``by_step``: also its images after every kept step. The set
    names are for display only."""
    images, factors = {}, {}
    if real is not None:
        images[f"{source} (real)"] = real
        factors[f"{source} (real)"] = {"ood_set": source, "attack": "none", "attack_steps": 0}
    for a in attacks:
        s = a.settings
        name = "smooth" if s["lam"] > 0 else "patchy"
        eps = {} if s.get("eps") is None else {"eps_255": round(s["eps"] * 255, 6)}
        bound = f", ε={eps['eps_255']:g}/255" if eps else ""
        for step, x in [*(a.snapshots.items() if by_step else []), (s["steps"], a.images)]:
            label = f"{source} ({name}{bound} @ {step})"
            images[label] = x
            factors[label] = {"ood_set": source, "attack": name, "attack_steps": int(step), **eps}
    return images, factors


PAIR_DRAWS = ("official", "distinct")


def curve_detectors(specs: list) -> list:
    """The detectors drawn against attack steps and ε: the first of ``specs`` (the published 1-NN) and the first
    MCM after it (specs as :func:`helpers.detectors.get` takes them)."""
    from .detectors import get

    return [specs[0], *[d for d in specs[1:] if get(d).name == "mcm"][:1]]


def pairs(sources, bank, n: int, seed: int = 0, draw: str = "official", id_size: int | None = None):
    """``n`` (source, target) pairs drawn with ``seed``: a subset of the source OOD dataset, a subset of the
    memory-bank dataset (the targets; source ``i`` is attacked towards target ``i``) and the targets' row indices
    in the bank.

    ``draw="official"``: PLP's notebook (module docstring): numpy's legacy generator seeded with ``seed``, the
    target rows ``choice(len(bank), n)`` first, then the source rows ``choice(len(sources), n)``, both *with*
    replacement (an image can be drawn twice) and in draw order. The official notebook draws its ``n`` ID test
    images from the same stream between the two; ``id_size`` (the size of the ID test set) makes that draw too, so
    the source rows are the official ones for datasets in the same order. ``draw="distinct"``: this package's draw
    before (``default_rng(seed)``, sources then targets, without replacement, sources sorted)."""
    if draw not in PAIR_DRAWS:
        raise ValueError(f"draw must be one of {PAIR_DRAWS}, not {draw!r}")
    if draw == "official":
        rng = np.random.RandomState(seed)
        tgt = rng.choice(len(bank), n)
        if id_size is not None:
            rng.choice(id_size, n)  # the official ID test images (this package scores its own ID subset)
        src = rng.choice(len(sources), n)
        return sources.subset(src), bank.subset(tgt), tgt
    rng = np.random.default_rng(seed)
    if n > min(len(sources), len(bank)):
        raise ValueError(f"{n} distinct pairs need {n} images in both {sources.name} ({len(sources)}) and {bank.name} "
                         f"({len(bank)}). Fix: ask for at most {min(len(sources), len(bank))} pairs "
                         f"(notebook parameter n_pairs), draw with replacement (pair_draw='official') or use a larger "
                         f"dataset")
    src = np.sort(rng.choice(len(sources), n, replace=False))
    tgt = rng.choice(len(bank), n, replace=False)
    return sources.subset(src), bank.subset(tgt), tgt


def bank_without(train: Features, targets) -> Features:
    """The memory bank ``train`` without the target images (``targets``: an :class:`ImageFolderDataset` of bank
    images or their paths; a target drawn twice is removed once), matched by path, so rows of the bank left out
    at extraction (``on_error="skip"``) do not shift it. O(N + n), as PLP's boolean mask over the bank."""
    drop = set(getattr(targets, "paths", targets))
    keep = np.fromiter((p not in drop for p in train.paths), dtype=bool, count=len(train))
    return train.subset(np.flatnonzero(keep))
