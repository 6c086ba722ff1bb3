r"""The modality gap: where image and text embeddings sit on the unit sphere relative to each other.

Liang, Zhang, Kwon, Yeung, Zou. *Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive
Representation Learning*, NeurIPS 2022 (``Weixin-Liang/Modality-Gap``): CLIP's image and text embeddings occupy
two separate cones; the **gap** is the distance between the centroids of the L2-normalised embeddings,

.. math::

    \Delta_{\text{gap}} = \Big\lVert \frac1N \sum_i \hat x_i - \frac1N \sum_i \hat t_i \Big\rVert ,

over matched pairs $(\hat x_i, \hat t_i)$ (here: an image and its class prompt). They trace it to the cone
effect at initialisation, kept by a low contrastive temperature. Wang & Isola (ICML 2020, *Understanding
Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere*) measure
**alignment** $\mathbb E\,\lVert \hat x - \hat t \rVert^2$ over matched pairs (lower = closer) and
**uniformity** $\log \mathbb E\, e^{-2 \lVert u - v \rVert^2}$ over pairs of one modality (lower = more uniform).

:func:`gap_measures` returns these and the mean cosines that show a gap at a glance: an image with its own class
prompt, with other classes' prompts, with other images, and prompt with prompt. CLIP's signature is
image·image and text·text cosines well above image·text ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _mean_offdiag(sim: np.ndarray) -> float:
    n = len(sim)
    return float((sim.sum() - np.trace(sim)) / max(1, n * n - n))


def uniformity(x: np.ndarray, t: float = 2.0, max_points: int = 2000, seed: int = 0) -> float:
    """Wang & Isola's uniformity ``log E exp(-t ||u - v||²)`` over distinct pairs of rows of ``x`` (N, D)
    (normalised); at most ``max_points`` rows (seeded), the pairs' count grows quadratically."""
    x = np.asarray(x, np.float64)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    sq = np.clip(2 - 2 * x @ x.T, 0, None)
    iu = np.triu_indices(len(x), 1)
    return float(np.log(np.mean(np.exp(-t * sq[iu]))))


def gap_measures(image: np.ndarray, labels: np.ndarray, text: np.ndarray, max_points: int = 2000,
                 seed: int = 0) -> dict[str, float]:
    """Gap measures of normalised image embeddings (N, D) with ``labels`` (N,) into the class-prompt
    embeddings ``text`` (C, D); each image is matched with its own class prompt."""
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    labels = np.asarray(labels)
    matched = text[labels]
    cos = image @ text.T  # (N, C)
    own = cos[np.arange(len(image)), labels]
    other = (cos.sum(1) - own) / max(1, text.shape[0] - 1)
    rng = np.random.default_rng(seed)
    sub = image if len(image) <= max_points else image[rng.choice(len(image), max_points, replace=False)]
    return {
        "centroid gap": float(np.linalg.norm(image.mean(0) - matched.mean(0))),
        "image·own prompt": float(own.mean()),
        "image·other prompts": float(other.mean()),
        "image·image": _mean_offdiag(sub @ sub.T),
        "prompt·prompt": _mean_offdiag(text @ text.T),
        "alignment": float(np.mean(np.sum((image - matched) ** 2, 1))),
        "uniformity (images)": uniformity(image, max_points=max_points, seed=seed),
    }


def gap_by_set(sets: dict, text: np.ndarray, id_name: str, max_points: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`gap_measures` for each feature set of ``sets`` ({name: :class:`helpers.features.Features`}) against
    the class prompts ``text`` (C, D). The ID set ``id_name`` pairs each image with its labelled class; an OOD
    image has no class, so it is paired with the prompt it is closest to (the class zero-shot assigns it), which
    is the prompt an OOD detector compares it with."""
    rows = []
    for name, f in sets.items():
        image = np.asarray(f.image, np.float64)
        labels = f.labels if name == id_name else (image @ np.asarray(text, np.float64).T).argmax(1)
        rows.append({"set": name, "role": "ID" if name == id_name else "OOD",
                     **gap_measures(image, labels, text, max_points=max_points, seed=seed)})
    return pd.DataFrame(rows)


def _class_text(bench, prompts: str | list[str]) -> np.ndarray:
    """The normalised class-prompt embeddings (C, D) of a benchmark's model and classes."""
    from .features import text_features
    from .prompts import get_prompts

    return text_features(bench.model, bench.class_names, get_prompts(prompts))


def benchmark_gap(bench, prompts: str | list[str] = "single", **kwargs) -> pd.DataFrame:
    """:func:`gap_by_set` of a :class:`helpers.benchmark.Benchmark` (its model's image features of the ID and OOD
    sets) against its model's class prompts (a prompt-set name of :mod:`helpers.prompts` or templates), with a
    ``model`` column."""
    return gap_by_set(bench.sets(), _class_text(bench, prompts), bench.id_name, **kwargs).assign(model=bench.model.name)


def projection_inputs(bench, prompts: str | list[str] = "single") -> tuple:
    """``(ID image (N, D), ID labels, class prompts (C, D), OOD images (M, D))`` of a benchmark, for
    :func:`helpers.plots.modality_panels`."""
    text = _class_text(bench, prompts)
    ood = np.concatenate([f.image for f in bench.ood.values()]) if bench.ood else bench.id.image[:0]
    return bench.id.image, bench.id.labels, text, ood
