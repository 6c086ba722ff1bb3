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
- :func:`probe_runs`, :func:`finetune_runs`, :func:`coop_runs`: train one method for every (shots, seed) split
  and evaluate it with :func:`helpers.evaluation.evaluate` on one benchmark (a seeded evaluation subset, so all
  methods score the same images); each returns the evaluations, which :func:`helpers.tables.claims_table`
  compares pairwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.imagefolder import ImageFolderDataset, per_class_choice
from ..detectors import get
from ..evaluation import Evaluation, evaluate
from ..features import Features

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


def kshot_splits(labels: np.ndarray, shots: Sequence, seeds: Sequence[int]) -> dict[tuple[str, int], np.ndarray]:
    """``{(shots label, seed): indices}``: every (shots, seed) pair draws its own k-shot split, as CoOp does."""
    return {(shots_label(k), s): kshot_indices(labels, k, seed=s) for k in shots for s in seeds}


def _with_seed(spec, seed: int) -> dict:
    """A detector spec whose training seed is the run's seed (detectors that have a ``seed`` parameter)."""
    d = get(spec)
    params = dict(d.params)
    if "seed" in params:
        params["seed"] = seed
    return {"name": d.name, **params}


def probe_runs(bench, train: Features, splits: Mapping, detectors: Mapping[str, Sequence], **evaluate_args
               ) -> list[Evaluation]:
    """Probe detectors trained on each split's rows of ``train`` (``splits``: (shots, seed) -> rows of ``train``).
    ``detectors``: method name (e.g. ``"linear probe"``, ``"PLP"``) -> detector specs; their seed is the run's."""
    out = []
    for (k, s), rows in splits.items():
        for method, specs in detectors.items():
            out.append(evaluate([_with_seed(d, s) for d in specs], bench, train=train.subset(rows), method=method,
                                shots=k, seed=s, **evaluate_args))
    return out


def finetune_runs(bench, train_ds: ImageFolderDataset, splits: Mapping, text: np.ndarray, detectors: Sequence,
                  finetune_args: Mapping, epochs: Mapping, extract: Mapping, **evaluate_args
                  ) -> tuple[list[Evaluation], pd.DataFrame, pd.DataFrame]:
    """Full fine-tuning (:func:`helpers.finetune.finetune_image_tower`) on each split of ``train_ds``
    (``splits``: (shots, seed) -> indices into it), evaluated by ``detectors`` on ``bench`` re-encoded by the
    fine-tuned tower. Returns the evaluations, the training logs and, per setting, the weight change by block of
    the first seed's tower (:func:`helpers.finetune.weight_change_by_block`)."""
    from .full import finetune_image_tower, weight_change_by_block

    out, logs, drift, first = [], [], [], {}
    kinds = tuple(dict.fromkeys(kind for d in detectors for kind in get(d).needs))  # what the detectors read
    for (k, s), idx in splits.items():
        ft = finetune_image_tower(bench.model, train_ds.subset(idx), text, epochs=per_shots(epochs, k, "ft_epochs"),
                                  seed=s, **finetune_args)
        out.append(evaluate(detectors, bench.with_model(ft.loaded, kinds=kinds, **extract), method="fine-tune",
                            shots=k, seed=s, **evaluate_args))
        logs += [{"shots": k, "seed": s, **h} for h in ft.history]
        if first.setdefault(k, s) == s:
            drift.append(weight_change_by_block(bench.model.model.visual, ft.loaded.model.visual).assign(shots=k))
    return out, pd.DataFrame(logs), pd.concat(drift, ignore_index=True)


def coop_runs(bench, train: Features, splits: Mapping, methods: Mapping[str, float], detectors: Sequence,
              coop_args: Mapping, epochs: Mapping, **evaluate_args) -> tuple[list[Evaluation], pd.DataFrame]:
    """Prompt learning (:func:`helpers.finetune.coop_model`) on each split's rows of ``train``, for each method
    (name -> LoCoOp's λ; 0 is CoOp), evaluated by ``detectors`` on ``bench`` with the learned prompts (the image
    features are reused). Returns the evaluations and the training logs."""
    from .coop import coop_model

    out, logs = [], []
    for (k, s), rows in splits.items():
        for method, lam in methods.items():
            model, prompts = coop_model(bench.model, train.subset(rows), bench.class_names, lam=lam, seed=s,
                                        epochs=per_shots(epochs, k, "coop_epochs"), **coop_args)
            out.append(evaluate(detectors, bench.with_model(model), method=method, shots=k, seed=s, **evaluate_args))
            logs += [{"method": method, "shots": k, "seed": s, **h} for h in prompts.history]
    return out, pd.DataFrame(logs)
