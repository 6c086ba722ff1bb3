"""OOD metrics with the conventions made explicit.

Scores are "higher = more in-distribution" everywhere in the package.

- **AUROC**: probability that a random ID sample scores above a random OOD sample (ties count half);
  the same whichever class is called positive.
- **FPR95** (``fpr_positive``):
  ``"id"`` (default; MCM, GL-MCM, SeTAR, NegLabel, PLP, CMA): the fraction of OOD samples accepted when the
  threshold accepts 95% of ID samples.
  ``"ood"`` (OpenOOD, pytorch-ood): the fraction of ID samples flagged as OOD when 95% of OOD samples are
  flagged.
- **FPR95 cut-off** (``fpr_method``):
  ``"nearest"`` (MCM/SeTAR, Hendrycks' ``fpr_and_fdr_at_recall``): the ROC point whose TPR is closest to 0.95;
  ``"interpolate"`` (PLP/CMA): linear interpolation of the ROC curve at TPR = 0.95.
- **AUPR-In / AUPR-Out**: average precision with ID resp. OOD as the positive class (scikit-learn's
  ``average_precision_score``; OOD-positive uses the negated score).

Point estimates use scikit-learn. Bootstrap confidence intervals resample ID and OOD scores independently;
all resamples of a block are evaluated at once from one sort (:func:`weighted_auroc_fpr`), which gives the same
values as scikit-learn on each resample (tested) at a small fraction of the cost.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .errors import NonFiniteError

RECALL = 0.95


def _check(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise NonFiniteError(f"{name} contains {bad} NaN/inf value(s) of {x.size}; a score function produced "
                             f"non-finite values (check temperature overflow or the features).")
    return x


def fpr_at_recall(pos_scores: np.ndarray, neg_scores: np.ndarray, recall: float = RECALL,
                  method: str = "nearest") -> float:
    """False-positive rate of ``neg`` at the threshold where ``recall`` of ``pos`` is reached (higher = positive)."""
    y = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[pos_scores, neg_scores], drop_intermediate=False)
    if method == "interpolate":
        return float(np.interp(recall, tpr, fpr))
    if method != "nearest":
        raise ValueError(f"fpr_method must be 'nearest' or 'interpolate', not {method!r}")
    return _nearest(tpr, fpr, recall)


def _nearest(tpr: np.ndarray, fpr: np.ndarray, recall: float) -> float:
    """Hendrycks' rule on an ROC curve ordered by decreasing threshold: the point whose TPR is nearest to
    ``recall``, among the points up to the first that reaches TPR = 1; ties go to the lower threshold."""
    end = int(np.argmax(tpr >= 1.0)) + 1
    gap = np.abs(tpr[:end] - recall)
    return float(fpr[np.flatnonzero(gap == gap.min())[-1]])


def ood_metrics(id_scores, ood_scores, *, fpr_positive: str = "id", fpr_method: str = "nearest",
                recall: float = RECALL) -> dict[str, float]:
    """``auroc``, ``fpr95``, ``aupr_in``, ``aupr_out`` of ID vs OOD scores (higher score = more ID)."""
    s_id, s_ood = _check("id_scores", id_scores), _check("ood_scores", ood_scores)
    y_id = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    s = np.r_[s_id, s_ood]
    if fpr_positive == "id":
        fpr95 = fpr_at_recall(s_id, s_ood, recall, fpr_method)
    elif fpr_positive == "ood":
        fpr95 = fpr_at_recall(-s_ood, -s_id, recall, fpr_method)
    else:
        raise ValueError(f"fpr_positive must be 'id' or 'ood', not {fpr_positive!r}")
    return {
        "auroc": float(roc_auc_score(y_id, s)),
        "fpr95": fpr95,
        "aupr_in": float(average_precision_score(y_id, s)),
        "aupr_out": float(average_precision_score(1 - y_id, -s)),
    }


# ------------------------------------------------------------------------- fast versions (bootstrap)
def auroc_fast(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half; equals ``roc_auc_score``."""
    srt = np.sort(s_id)
    below = np.searchsorted(srt, s_ood, side="left")  # ID scores < o
    not_above = np.searchsorted(srt, s_ood, side="right")  # ID scores <= o
    greater = len(srt) - not_above
    ties = not_above - below
    return float((greater.sum() + 0.5 * ties.sum()) / (len(s_id) * len(s_ood)))


def fpr_fast(pos: np.ndarray, neg: np.ndarray, recall: float = RECALL, method: str = "nearest") -> float:
    """Same value as :func:`fpr_at_recall`, from sorted arrays instead of a full ROC curve."""
    thr = np.unique(np.r_[pos, neg])[::-1]  # candidate thresholds, descending (score >= thr is positive)
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    tpr = (len(pos_s) - np.searchsorted(pos_s, thr, side="left")) / len(pos_s)
    fpr = (len(neg_s) - np.searchsorted(neg_s, thr, side="left")) / len(neg_s)
    tpr, fpr = np.r_[0.0, tpr], np.r_[0.0, fpr]
    if method == "interpolate":
        return float(np.interp(recall, tpr, fpr))
    return _nearest(tpr, fpr, recall)


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``n_boot`` resamples with replacement; (n_boot, n)."""
    idx = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n * n_boot).reshape(n_boot, n)


def _grouped(values: np.ndarray, inverse: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Per resample (rows of ``weights`` (B, n)) the total weight of each unique value; (B, size)."""
    b = len(weights)
    flat = (inverse[None, :] + size * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, weights=weights.ravel(), minlength=b * size).reshape(b, size)


def _weights_by_value(s_id, s_ood, w_id, w_ood):
    """Per resample and unique score (ascending) the ID and OOD weights: two (B, U) arrays."""
    u, inv = np.unique(np.r_[s_id, s_ood], return_inverse=True)
    a = _grouped(u, inv[:len(s_id)], np.asarray(w_id, dtype=np.float64), len(u))
    o = _grouped(u, inv[len(s_id):], np.asarray(w_ood, dtype=np.float64), len(u))
    return a, o


def _auroc_of(a: np.ndarray, o: np.ndarray) -> np.ndarray:
    below = np.cumsum(o, 1) - o  # OOD weight strictly below each unique score
    return (a * (below + 0.5 * o)).sum(1) / (a.sum(1) * o.sum(1))


def weighted_auroc(s_id: np.ndarray, s_ood: np.ndarray, w_id: np.ndarray, w_ood: np.ndarray) -> np.ndarray:
    """AUROC (B,) of ``B`` weighted versions of the samples (see :func:`weighted_auroc_fpr`)."""
    return _auroc_of(*_weights_by_value(s_id, s_ood, w_id, w_ood))


def weighted_auroc_fpr(s_id: np.ndarray, s_ood: np.ndarray, w_id: np.ndarray, w_ood: np.ndarray, *,
                       recall: float = RECALL, fpr_positive: str = "id", fpr_method: str = "nearest"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and FPR95 (B,) of ``B`` weighted versions of the samples at once: row ``b`` counts ID sample ``i``
    ``w_id[b, i]`` times and OOD sample ``j`` ``w_ood[b, j]`` times (bootstrap resamples as counts).

    Equal to :func:`auroc_fast` / :func:`fpr_fast` on the explicitly repeated samples (tested), computed with one
    sort for all resamples: per unique score the ID and OOD weights, then cumulative sums.
    """
    a, o = _weights_by_value(s_id, s_ood, w_id, w_ood)
    auroc = _auroc_of(a, o)
    if fpr_positive == "id":  # thresholds descending: a score >= u is called ID
        pos, neg = a[:, ::-1], o[:, ::-1]
    elif fpr_positive == "ood":  # OOD positive on the negated score: thresholds ascending in the score
        pos, neg = o, a
    else:
        raise ValueError(f"fpr_positive must be 'id' or 'ood', not {fpr_positive!r}")
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    cum_pos = np.concatenate([np.zeros((len(pos), 1)), np.cumsum(pos, 1)], 1)
    cum_neg = np.concatenate([np.zeros((len(neg), 1)), np.cumsum(neg, 1)], 1)
    tpr, fpr = cum_pos / n_pos[:, None], cum_neg / n_neg[:, None]
    if fpr_method == "interpolate":
        return auroc, np.array([np.interp(recall, t, f) for t, f in zip(tpr, fpr)])
    if fpr_method != "nearest":
        raise ValueError(f"fpr_method must be 'nearest' or 'interpolate', not {fpr_method!r}")
    gap = np.abs(tpr - recall)
    first_full = np.argmax(cum_pos >= n_pos[:, None], 1)
    gap[np.arange(gap.shape[1])[None, :] > first_full[:, None]] = np.inf  # Hendrycks: stop at full recall
    last_min = gap.shape[1] - 1 - np.argmin(gap[:, ::-1], 1)  # ties go to the lower threshold
    return auroc, fpr[np.arange(len(fpr)), last_min]


def bootstrap_ci(id_scores, ood_scores, *, n_boot: int = 200, alpha: float = 0.05, seed: int = 0,
                 fpr_positive: str = "id", fpr_method: str = "nearest", block: int = 50
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals ``(low, high)`` for ``auroc`` and ``fpr95``.

    ID and OOD scores are resampled independently with replacement, ``n_boot`` times, with ``seed``; the
    resamples are evaluated ``block`` at a time by :func:`weighted_auroc_fpr`.
    """
    s_id, s_ood = _check("id_scores", id_scores), _check("ood_scores", ood_scores)
    rng = np.random.default_rng(seed)
    au, fp = [], []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        w_id, w_ood = bootstrap_counts(len(s_id), b, rng), bootstrap_counts(len(s_ood), b, rng)
        a, f = weighted_auroc_fpr(s_id, s_ood, w_id, w_ood, fpr_positive=fpr_positive, fpr_method=fpr_method)
        au.append(a)
        fp.append(f)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {"auroc": tuple(np.percentile(np.concatenate(au), q)), "fpr95": tuple(np.percentile(np.concatenate(fp), q))}


def ood_report(id_scores, ood_scores, *, n_boot: int = 0, seed: int = 0, percent: bool = True,
               fpr_positive: str = "id", fpr_method: str = "nearest") -> dict[str, float]:
    """One table row: the metrics (in % if ``percent``) and, with ``n_boot > 0``, 95% bootstrap bounds."""
    m = ood_metrics(id_scores, ood_scores, fpr_positive=fpr_positive, fpr_method=fpr_method)
    scale = 100.0 if percent else 1.0
    row = {k: v * scale for k, v in m.items()}
    if n_boot:
        ci = bootstrap_ci(id_scores, ood_scores, n_boot=n_boot, seed=seed, fpr_positive=fpr_positive,
                          fpr_method=fpr_method)
        for k, (lo, hi) in ci.items():
            row[f"{k}_lo"], row[f"{k}_hi"] = lo * scale, hi * scale
    return row


def accuracy(logits_or_pred, labels) -> float:
    """Top-1 accuracy from logits/similarities (N, C) or predicted labels (N,)."""
    p = np.asarray(logits_or_pred)
    pred = p.argmax(1) if p.ndim == 2 else p
    labels = np.asarray(labels)
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    return float((pred == labels).mean())
