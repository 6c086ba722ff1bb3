"""The few-shot protocol of the adaptation experiments: seeded k-shot splits, evaluation sets, mean ± std.

Protocol (CoOp, Zhou et al., IJCV 2022, ``KaiyangZhou/CoOp``; LoCoOp, Miyai et al., NeurIPS 2023,
``AtsuMiyai/LoCoOp`` ``scripts/locoop/train.sh``; Ming & Li, IJCV 2023): each method is trained on
``k`` labelled images per class (k = 1 and 16), the ``k``-shot subset being drawn with the run's seed;
three seeds (1, 2, 3) are run and the metrics averaged. Here a third setting, ``"full"``, uses every
training image (PLP's linear probes and fine-tuning baselines train on the full split).

- :func:`kshot_indices` the seeded ``k``-shot subset of a labelled set, :func:`split_union` the images that
  some split needs;
- :func:`shots_label` / :func:`per_shots` name a setting and look up a per-setting parameter
  (``{"1": 50, "16": 50, "full": 5}``; string keys because papermill passes dict keys as strings);
- :func:`subset_features` rows of cached :class:`~helpers.features.Features`;
- :func:`eval_indices` / :func:`eval_subset` a seeded cap on the number of evaluation images per set (the
  teaching profile evaluates fine-tuned image towers, which must re-encode every image, on a subset);
- :func:`ood_rows` one table row per OOD set with the package's one metrics function;
- :func:`mean_std` aggregation over seeds, :func:`mean_std_table` its readable wide form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.imagefolder import ImageFolderDataset, per_class_choice
from ..features import KINDS, Features
from ..metrics import accuracy, ood_report

FULL = "full"


def shots_label(shots: int | str | None) -> str:
    """``1`` -> ``"1"``, ``16`` -> ``"16"``, ``None`` / ``"full"`` -> ``"full"`` (table label and dict key)."""
    if shots is None or str(shots) == FULL:
        return FULL
    k = int(shots)
    if k < 1:
        raise ValueError(f"shots must be a positive number of images per class or 'full', not {shots!r}")
    return str(k)


def per_shots(table: Mapping, shots: int | str | None, name: str = "parameter"):
    """The entry of a per-setting table (``{"1": .., "16": .., "full": ..}``) for ``shots``."""
    key = shots_label(shots)
    lookup = {str(k): v for k, v in table.items()}
    if key not in lookup:
        raise ValueError(f"{name} has no entry for shots={key!r}; it has {sorted(lookup)}. "
                       f"Fix: add \"{key}\": <value> to {name}.")
    return lookup[key]


def kshot_indices(labels: np.ndarray, shots: int | str | None, seed: int) -> np.ndarray:
    """Sorted indices (M,) of ``shots`` images of every class of ``labels`` (N,), chosen with ``seed``.

    ``shots="full"`` (or None) returns every index. A class with fewer than ``shots`` images is an error,
    because a silently smaller split would change what "k-shot" means.
    """
    labels = np.asarray(labels)
    if shots_label(shots) == FULL:
        return np.arange(len(labels))
    k = int(shots)
    classes, counts = np.unique(labels, return_counts=True)
    short = classes[counts < k]
    if len(short):
        raise ValueError(f"{k}-shot split impossible: class(es) {short[:5].tolist()} have only "
                         f"{counts[counts < k].min()} image(s). Fix: lower shots or use more training images.")
    return per_class_choice(labels, k, seed)


def split_union(splits: Mapping) -> tuple[np.ndarray, dict]:
    """The sorted union (M,) of the index arrays in ``splits`` (key -> indices) and every split re-expressed as
    positions in that union: extract features for the union once (not for the whole training set, which for
    ImageNet is 1.28M images), then index them with the positions."""
    need = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in splits.values()]))
    return need, {k: np.searchsorted(need, np.asarray(v, dtype=np.int64)) for k, v in splits.items()}


def eval_indices(n: int, max_images: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_images`` of ``n`` evaluation images, chosen with ``seed`` (all if None)."""
    if max_images is None or max_images >= n:
        return np.arange(n)
    if max_images < 1:
        raise ValueError(f"max_images must be positive or None, not {max_images}")
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


def subset_features(feats: Features, idx: Sequence[int] | np.ndarray) -> Features:
    """The rows ``idx`` of ``feats`` (labels, paths and every feature kind present)."""
    idx = np.asarray(idx, dtype=np.int64)
    arrays = {k: None if getattr(feats, k) is None else np.asarray(getattr(feats, k)[idx]) for k in KINDS}
    return dataclasses.replace(feats, labels=feats.labels[idx], paths=[feats.paths[i] for i in idx],
                               meta={**feats.meta, "subset": len(idx)}, **arrays)


def eval_subset(feats: Features, dataset: ImageFolderDataset, max_images: int | None,
                seed: int = 0) -> tuple[Features, ImageFolderDataset]:
    """The same seeded subset (:func:`eval_indices`) of cached features and of their dataset, rows aligned
    (methods that change the image tower re-encode the subset's images; the others read its features)."""
    if feats.paths != dataset.paths:
        raise ValueError(f"features of {feats.dataset!r} do not align with dataset {dataset.name!r} "
                         f"({len(feats)} vs {len(dataset)} images; skipped images?). Fix: extract with on_error='fail'.")
    idx = eval_indices(len(dataset), max_images, seed)
    return subset_features(feats, idx), dataset.subset(idx)


def ood_rows(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], *, id_logits: np.ndarray | None = None,
             id_labels: np.ndarray | None = None, fpr_method: str = "nearest", **keys) -> list[dict]:
    """One row per OOD set: ``keys`` (e.g. method, shots, seed, score), ``auroc``/``fpr95``/... in %, and the
    ID accuracy (%) of ``id_logits`` (N, C) when given. Higher score = more ID; ID is the positive class."""
    acc = 100 * accuracy(id_logits, id_labels) if id_logits is not None else np.nan
    rows = []
    for name, s in ood_scores.items():
        m = ood_report(id_scores, s, fpr_method=fpr_method)
        rows.append({**keys, "ood": name, "id_acc": acc, "auroc": m["auroc"], "fpr95": m["fpr95"]})
    return rows


def mean_std(df: pd.DataFrame, by: list[str], values: Sequence[str] = ("id_acc", "auroc", "fpr95")) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed) of ``values`` over the rows of each
    ``by`` group (the seeds). Columns ``<value>_mean``, ``<value>_std`` and ``seeds``; group order preserved."""
    g = df.groupby(by, sort=False)
    out = g[list(values)].agg(["mean", "std"])
    out.columns = [f"{v}_{s}" for v, s in out.columns]
    out = out.fillna({f"{v}_std": 0.0 for v in values})
    out["seeds"] = g.size()
    return out.reset_index()


def mean_std_table(summary: pd.DataFrame, index: list[str], columns: str = "ood",
                   values: Sequence[str] = ("auroc", "fpr95"), per_row: Sequence[str] = ("id_acc",),
                   decimals: int = 1) -> pd.DataFrame:
    """:func:`mean_std` output as a readable wide table of ``"mean ± std"`` text: one row per ``index`` group;
    first the ``per_row`` values (the same for every ``columns`` entry, e.g. the ID accuracy), then one column
    ``"<entry> <value>"`` per ``columns`` entry and value (e.g. ``"dtd10 auroc"``). Order of appearance is kept."""
    fmt = f"{{:.{decimals}f}}".format
    text = {v: summary[f"{v}_mean"].map(fmt) + " ± " + summary[f"{v}_std"].map(fmt) for v in [*per_row, *values]}
    long = summary[index + [columns]].assign(**text)
    out = long.drop_duplicates(index)[index + list(per_row)].reset_index(drop=True)
    for entry in dict.fromkeys(summary[columns]):
        part = long[long[columns] == entry][index + list(values)]
        out = out.merge(part.rename(columns={v: f"{entry} {v}" for v in values}), on=index, how="left")
    return out
