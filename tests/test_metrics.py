import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers.errors import NonFiniteError
from helpers.metrics import accuracy, auroc_fast, bootstrap_ci, fpr_fast, ood_metrics, ood_report


def hendrycks_fpr_at_recall(y_true, y_score, recall_level=0.95):
    """Independent re-implementation of the rule in Hendrycks' ``fpr_and_fdr_at_recall`` (used by MCM/SeTAR):
    walk thresholds from high to low, keep the points up to full recall, pick the recall nearest 0.95
    scanning from the full-recall end."""
    order = np.argsort(-y_score, kind="mergesort")
    s, y = y_score[order], y_true[order]
    distinct = np.where(np.diff(s))[0]
    ends = np.r_[distinct, len(y) - 1]
    tps = np.cumsum(y)[ends]
    fps = 1 + ends - tps
    last = np.searchsorted(tps, tps[-1])
    recall = tps[: last + 1] / tps[-1]
    fps = fps[: last + 1]
    best, best_gap = None, np.inf
    for i in range(last, -1, -1):  # from full recall downwards; first minimum wins
        gap = abs(recall[i] - recall_level)
        if gap < best_gap:
            best, best_gap = i, gap
    return fps[best] / (len(y) - y.sum())


def test_hand_worked_example_both_conventions():
    # ID scores 1..20, OOD scores 0.5, 5.5, 10.5, 15.5, 19.5.
    s_id = np.arange(1, 21, dtype=float)
    s_ood = np.array([0.5, 5.5, 10.5, 15.5, 19.5])
    m = ood_metrics(s_id, s_ood)
    # ID-positive: accepting 95% of ID (19 of 20) means threshold 2; OOD above 2: 5.5, 10.5, 15.5, 19.5 -> 4/5.
    assert m["fpr95"] == pytest.approx(0.8)
    # OOD-positive: flag 95% of OOD -> with 5 OOD the nearest recall is 1.0 (gap 0.05) vs 0.8 (gap 0.15): all 5
    # flagged, threshold at score <= 19.5; ID flagged as OOD = ID scores <= 19.5 -> 19 of 20.
    m_ood = ood_metrics(s_id, s_ood, fpr_positive="ood")
    assert m_ood["fpr95"] == pytest.approx(19 / 20)
    # AUROC: pairs (id > ood): for each OOD o, count of ID above: 20, 15, 10, 5, 1 -> 51 / 100.
    assert m["auroc"] == pytest.approx(51 / 100)
    assert m_ood["auroc"] == pytest.approx(m["auroc"])


def test_interpolated_cutoff_hand_worked():
    # 4 ID, 2 OOD. ROC from the top: thresholds 4(id) 3.5(ood) 3(id) 2(id) 1.5(ood) 1(id)
    s_id, s_ood = np.array([4.0, 3.0, 2.0, 1.0]), np.array([3.5, 1.5])
    # TPR/FPR points: (0,0) (.25,0) (.25,.5) (.5,.5) (.75,.5) (.75,1) (1,1); interp at TPR .95 between
    # (.75,1) and (1,1) -> 1.0; nearest-recall: TPR 1.0 (gap .05) -> FPR 1.0.
    assert ood_metrics(s_id, s_ood, fpr_method="interpolate")["fpr95"] == pytest.approx(1.0)
    s_id2 = np.linspace(0, 1, 101)
    s_ood2 = np.array([-1.0, 0.5, 2.0])
    # threshold reaching TPR .95 is at 0.05 (96 of 101 at or above 0.05 -> .9505); OOD above: 0.5, 2.0 -> 2/3.
    assert ood_metrics(s_id2, s_ood2)["fpr95"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_and_reference(seed):
    rng = np.random.default_rng(seed)
    s_id = np.round(rng.normal(1, 1, 300), 1)  # rounding creates ties
    s_ood = np.round(rng.normal(0, 1, 200), 1)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[s_id, s_ood]
    m = ood_metrics(s_id, s_ood)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s))
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s))
    assert m["fpr95"] == pytest.approx(hendrycks_fpr_at_recall(y, s))
    assert ood_metrics(s_id, s_ood, fpr_positive="ood")["fpr95"] == pytest.approx(hendrycks_fpr_at_recall(1 - y, -s))
    # the fast versions used by the bootstrap agree exactly
    assert auroc_fast(s_id, s_ood) == pytest.approx(m["auroc"])
    assert fpr_fast(s_id, s_ood) == pytest.approx(m["fpr95"])
    for method in ("nearest", "interpolate"):
        assert fpr_fast(s_id, s_ood, method=method) == pytest.approx(
            ood_metrics(s_id, s_ood, fpr_method=method)["fpr95"])


def test_bootstrap_ci_brackets_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1, 1, 500), rng.normal(0, 1, 500)
    ci = bootstrap_ci(s_id, s_ood, n_boot=100, seed=3)
    m = ood_metrics(s_id, s_ood)
    assert ci["auroc"][0] < m["auroc"] < ci["auroc"][1]
    assert ci["fpr95"][0] < m["fpr95"] < ci["fpr95"][1]
    assert 0.02 < ci["auroc"][1] - ci["auroc"][0] < 0.1  # about 4 standard errors of an AUROC on 500 vs 500
    assert bootstrap_ci(s_id, s_ood, n_boot=100, seed=3) == ci
    row = ood_report(s_id, s_ood, n_boot=50)
    assert row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"] and row["auroc"] == pytest.approx(100 * m["auroc"])


def test_non_finite_scores_are_rejected():
    with pytest.raises(NonFiniteError, match="1 NaN/inf"):
        ood_metrics(np.array([1.0, np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="empty"):
        ood_metrics(np.array([]), np.array([0.0]))


def test_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    assert accuracy(np.array([1, 1]), [1, 0]) == 0.5
    with pytest.raises(ValueError):
        accuracy(logits, [1, 0])
