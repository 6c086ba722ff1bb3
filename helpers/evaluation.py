"""One evaluation core: :func:`evaluate` fits detectors, scores a benchmark and writes the canonical long table.

Every notebook scores through :func:`evaluate`. Each call returns an :class:`Evaluation` (its rows and the
per-image scores) and upserts its rows into ``<results_dir>/scores.csv``, the notebook's canonical *long* table:
one row per (step, model, method, shots, seed, detector, parameters, ID set, OOD set), with the columns of
:data:`COLUMNS`. Rows with the same key are replaced, so re-running a cell does not duplicate them. Wide tables
and figures are views of this table (:mod:`helpers.tables`, :mod:`helpers.views`); notebook 08 reads only these tables.

Conventions are columns, not footnotes: ``fpr_positive`` (``"id"``: the fraction of OOD accepted when 95% of ID
is accepted, as MCM, GL-MCM, SeTAR, NegLabel, PLP and CMA; ``"ood"``: OpenOOD's) and ``fpr_method``
(``"nearest"``: Hendrycks' nearest ROC point, as MCM/SeTAR; ``"interpolate"``: PLP/CMA). The package uses
``id`` / ``nearest`` in every notebook unless a row says otherwise. Metrics are in percent; ``*_lo``/``*_hi`` are
95% percentile-bootstrap bounds (ID and OOD images resampled independently, ``n_boot`` times, seed 0).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import detectors as det
from .benchmark import Benchmark
from .io import atomic_path
from .metrics import accuracy, ood_report

# experimental factors of an OOD set beyond its dataset, empty where they do not apply: notebook 07's attack
# ("none" for the real source images), its number of steps and its L∞ bound in units of 1/255; ``variant`` the
# part of the dataset (notebook 03's familiar OOD: the classes "seen" / "unseen" in pretraining; notebook 02's
# protocol variant); ``lam`` the regulariser weight the model was trained with (notebook 06: CMA's λ, 0 for
# FLYP). Select rows by them, never by a printed set or method name.
FACTORS = ["attack", "attack_steps", "eps_255", "variant", "lam"]
COLUMNS = ["notebook", "step", "model", "model_id", "method", "shots", "seed", "detector", "detector_label", "params",
           "id_set", "ood_set", *FACTORS, "n_id", "n_ood", "auroc", "auroc_lo", "auroc_hi", "fpr95", "fpr95_lo",
           "fpr95_hi", "fpr_positive", "fpr_method", "aupr_in", "aupr_out", "id_acc", "n_boot"]
KEY = ["step", "model_id", "method", "shots", "seed", "detector", "params", "id_set", "ood_set", *FACTORS,
       "fpr_positive", "fpr_method"]
TABLE = "scores.csv"


@dataclass
class Evaluation:
    """What one :func:`evaluate` call produced: the long-table rows, the per-image scores
    (``scores[detector label][set name]``, (N,)) and the fitted detectors (by label)."""

    table: pd.DataFrame
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    detectors: dict[str, det.Detector] = field(default_factory=dict)
    id_set: str = ""
    method: str = ""
    shots: str = ""
    seed: int = 0


def notebook_of(results_dir: str | Path | None) -> str:
    """The ``NN_topic`` part of a results folder (``results/02_zero_shot`` -> ``02_zero_shot``), else ''."""
    for part in reversed(Path(results_dir).parts if results_dir else ()):
        if re.match(r"^\d\d_\w+$", part):
            return part
    return ""


def evaluate(detectors: Iterable, bench: Benchmark, *, results_dir: str | Path | None = None, step: str = "main",
             method: str = "zero-shot", shots: int | str = 0, seed: int = 0, train=None, n_boot: int = 200,
             fpr_positive: str = "id", fpr_method: str = "nearest", device: str = "cpu",
             notebook: str | None = None, factors: dict[str, dict] | None = None) -> Evaluation:
    """Fit every detector on ``bench`` (its model, class names and ID training split ``train``, default
    ``bench.train``), score the ID set and every OOD set, and measure AUROC / FPR95 / AUPR with bootstrap CIs.

    ``detectors``: names, ``{"name": ..., **params}`` dicts or :class:`helpers.detectors.Detector` instances.
    ``step`` names the experiment inside the notebook, ``method`` / ``shots`` / ``seed`` the adaptation that made
    the model (they are key columns). ``factors`` gives, per OOD set of ``bench``, its :data:`FACTORS` columns
    and, when the set's images come from a named dataset, ``ood_set`` (the set's name in ``bench`` is then only
    its display name). With ``results_dir`` the rows are upserted into ``<results_dir>/scores.csv``.
    """
    factors = _checked_factors(factors or {}, bench.ood)
    train = bench.train if train is None else train
    fitted = {}
    for spec in detectors:
        d = det.get(spec).to(device)
        d.fit(bench.model, bench.class_names, train)
        if d.label in fitted:
            raise ValueError(f"two detectors print as {d.label!r}; give them different parameters")
        fitted[d.label] = d
    sets = {bench.id_name: bench.id, **bench.ood}
    scores = {label: {name: d(f) for name, f in sets.items()} for label, d in fitted.items()}
    rows = []
    for label, d in fitted.items():
        z = d.predict_logits(bench.id)
        acc = 100 * accuracy(z, bench.id.labels) if z is not None else np.nan
        for ood_name, f in bench.ood.items():
            m = metrics_of(scores[label][bench.id_name], scores[label][ood_name], n_boot=n_boot,
                           fpr_positive=fpr_positive, fpr_method=fpr_method)
            rows.append({"notebook": notebook if notebook is not None else notebook_of(results_dir), "step": step,
                         "model": bench.model.name, "model_id": bench.model.model_id, "method": method,
                         "shots": str(shots), "seed": int(seed), "detector": d.name, "detector_label": label,
                         "params": d.params_json(), "id_set": bench.id_name, "ood_set": ood_name,
                         **dict.fromkeys(FACTORS), **factors.get(ood_name, {}),
                         "n_id": len(bench.id), "n_ood": len(f), "fpr_positive": fpr_positive,
                         "fpr_method": fpr_method, "id_acc": acc, "n_boot": n_boot, **m})
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if table.duplicated(KEY).any():
        same = table[table.duplicated(KEY, keep=False)][["ood_set", *FACTORS]].drop_duplicates()
        raise ValueError(f"two OOD sets have the same key (ood_set and factors): {same.to_dict('records')}")
    if results_dir is not None:
        upsert(table, results_dir)
    return Evaluation(table, scores, fitted, bench.id_name, method, str(shots), int(seed))


def _checked_factors(factors: dict[str, dict], ood: dict) -> dict[str, dict]:
    """``factors`` of :func:`evaluate`, checked: every set it names is an OOD set, every key a factor column."""
    for name, f in factors.items():
        if name not in ood:
            raise KeyError(f"factors for {name!r}, which is not an OOD set of the benchmark ({list(ood)})")
        bad = set(f) - {"ood_set", *FACTORS}
        if bad:
            raise KeyError(f"factors of {name!r} name {sorted(bad)}; allowed: ['ood_set', *{FACTORS}]")
    return factors


def metrics_of(s_id: np.ndarray, s_ood: np.ndarray, **conventions) -> dict:
    """:func:`helpers.metrics.ood_report` (bootstrap seed 0), cached (:func:`helpers.cache.cached_arrays`, a JSON
    document under ``<cache>/metrics/``) keyed by the scores' bytes, where the ID scores end, the conventions and the
    metrics code: a warm re-run does not redo the bootstrap of scores it has seen. An edited report does not match
    the sha256 recorded with it and is recomputed."""
    from . import metrics
    from .cache import cached_arrays, code_hash

    code = code_hash(metrics.ood_report, metrics.ood_metrics, metrics.bootstrap_ci, metrics.bootstrap_counts,
                     metrics.weighted_auroc_fpr)
    h = hashlib.sha256(np.ascontiguousarray(s_id, np.float64).tobytes())
    h.update(np.ascontiguousarray(s_ood, np.float64).tobytes())
    # the sizes too: where the ID scores end and the OOD scores begin is part of the key
    key = {"scores": h.hexdigest(), "n_id": len(s_id), "n_ood": len(s_ood), "conventions": conventions, "code": code}
    _, row, _ = cached_arrays("metrics", "report", key, lambda: ({}, ood_report(s_id, s_ood, seed=0, **conventions)),
                              what="metric-report cache", lock=False)  # thousands, cheap: no lock files
    return row


def read_table(results_dir: str | Path) -> pd.DataFrame:
    """The canonical long table of a notebook (empty with :data:`COLUMNS` when none was written yet)."""
    path = Path(results_dir) / TABLE
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"shots": str, "params": str})


def upsert(rows: pd.DataFrame, results_dir: str | Path, decimals: int = 4) -> Path:
    """Insert ``rows`` into ``<results_dir>/scores.csv``, replacing rows with the same :data:`KEY`; atomic."""
    old = read_table(results_dir)
    both = pd.concat([old, rows], ignore_index=True) if len(old) else rows
    both = both.drop_duplicates(subset=KEY, keep="last").reindex(columns=COLUMNS)
    path = Path(results_dir) / TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        both.round(decimals).to_csv(tmp, index=False, float_format=f"%.{decimals}f")
    return path


def concat(evaluations: Iterable[Evaluation]) -> pd.DataFrame:
    """The rows of several evaluations as one long table."""
    return pd.concat([e.table for e in evaluations], ignore_index=True)
