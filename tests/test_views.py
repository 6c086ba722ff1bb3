"""Row selection by key (tables.select) and the named views of the long table (helpers.views), each checked
against a small hand-built long table whose answers are computed independently (by hand or by plain pandas)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import adversarial, tables, views
from helpers.evaluation import COLUMNS
from helpers.tables import SelectionError, select


def _row(detector, params, label, ood, auroc, *, method="zero-shot", step="main", fpr=None, acc=50.0, seed=0,
         **factors):
    return {"notebook": "05_setar", "step": step, "model": "m", "model_id": "m", "method": method, "shots": "0",
            "seed": seed, "detector": detector, "params": json.dumps(params), "detector_label": label,
            "id_set": "id", "ood_set": ood, "n_id": 10, "n_ood": 10, "auroc": auroc, "auroc_lo": auroc - 1,
            "auroc_hi": auroc + 1, "fpr95": 100 - auroc if fpr is None else fpr, "fpr95_lo": np.nan,
            "fpr95_hi": np.nan, "aupr_in": auroc, "aupr_out": auroc, "id_acc": acc, "fpr_positive": "id",
            "fpr_method": "nearest", "n_boot": 0, **factors}


MCM = {"T": 1.0, "prompts": "single"}
GL = {"T": 1.0, "lam": 1.0, "prompts": "single"}


@pytest.fixture
def long():
    rows = []
    for method, shift, acc in (("zero-shot", 0.0, 60.0), ("SeTAR", 5.0, 61.0)):
        for det, params, label, base in (("mcm", MCM, "MCM (T=1)", 70.0), ("gl_mcm", GL, "GL-MCM (T=1, λ=1)", 80.0)):
            rows += [_row(det, params, label, o, base + shift + k, method=method, acc=acc)
                     for k, o in enumerate(("far", "near"))]
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


# ------------------------------------------------------------------------------------------ select
def test_select_an_exact_match_returns_those_rows(long):
    got = select(long, expect=2, method="SeTAR", detector="mcm", params={"T": 1.0})
    assert list(got["auroc"]) == [75.0, 76.0] and list(got.index) == [4, 5]
    assert len(select(long, shots=0, seed=0.0)) == 8, "numbers find text and numeric columns alike"
    assert len(select(long, detector=["mcm", "gl_mcm"], ood_set="far")) == 4, "a list is any of its values"
    assert len(select(long, params=json.dumps(GL))) == 4, "a JSON string compares as it is"


def test_select_nothing_raises_and_names_the_criteria(long):
    with pytest.raises(SelectionError, match=r"detector='neglabel'.*found 0 of 8 rows.*'mcm', 'gl_mcm'"):
        select(long, detector="neglabel", method="SeTAR")
    with pytest.raises(SelectionError, match=r"params=\{'T': 0.01\}"):
        select(long, detector="mcm", params={"T": 0.01})
    with pytest.raises(KeyError, match="no column \\['attack'\\]"):
        select(long.drop(columns="attack"), attack="smooth")


def test_select_more_than_expected_raises(long):
    with pytest.raises(SelectionError, match=r"found 4 of 8 rows, expected 1 row"):
        select(long, expect=1, detector="mcm")  # both methods, both sets: a label prefix would not have noticed
    with pytest.raises(SelectionError, match="expected 3"):
        select(long, expect=3, detector="mcm", method="SeTAR")


def test_select_none_matches_empty_factors(long):
    t = long.assign(attack=["smooth"] + [np.nan] * 7)
    assert len(select(t, attack=None)) == 7 and select(t, attack="smooth", expect=1).index[0] == 0


def test_wide_refuses_two_rows_in_one_cell(long):
    with pytest.raises(SelectionError, match="share an \\['detector_label'\\]"):
        tables.wide(long, "auroc")  # zero-shot and SeTAR rows of the same detector
    w = tables.wide(long, "auroc", index=["method", "detector_label"])
    assert w.loc[("SeTAR", "MCM (T=1)"), "average"] == 75.5


# -------------------------------------------------------------------------------------------- views
def test_method_table_equals_an_independent_pivot(long):
    t = views.method_table(long)
    expect = long.pivot_table(index=["method", "detector_label"], columns="ood_set", values="auroc")
    for (method, label), row in expect.iterrows():
        for o in ("far", "near"):
            assert t.loc[(method, label), ("auroc", o)] == f"{row[o]:.1f} [{row[o] - 1:.1f}, {row[o] + 1:.1f}]"
        assert t.loc[(method, label), ("auroc", "average")] == f"{row.mean():.1f}"
    assert t.loc[("SeTAR", "MCM (T=1)"), ("fpr95", "far")] == "25.0"  # no FPR CI in these rows
    assert list(t[("", "ID acc")]) == [60.0, 60.0, 61.0, 61.0]
    flat = views.flat_columns(t)
    assert list(flat.columns[:4]) == ["method", "detector_label", "auroc far", "auroc near"]
    assert flat.columns[-1] == "ID acc"


def test_published_comparison_keyed_by_method_detector_and_params(long):
    pub = pd.DataFrame([{"method": m, "source": "paper", "ood": o, "fpr95": 10.0, "auroc": 90.0}
                        for m in ("SeTAR (MCM)", "MCM", "NegLabel") for o in ("far", "near", "average")])
    rows = {"SeTAR (MCM)": {"method": "SeTAR", "detector": "mcm", "params": {"T": 1.0}},
            "MCM": {"method": "zero-shot", "detector": "mcm"}, "NegLabel": None}
    c = views.published_comparison(long, pub, rows, mos=("far", "near")).set_index(["method", "ood"])
    assert set(c.index.get_level_values(0)) == {"SeTAR (MCM)", "MCM"}
    assert c.loc[("SeTAR (MCM)", "near"), "auroc ours"] == 76.0
    assert c.loc[("SeTAR (MCM)", "average"), "auroc ours"] == 75.5  # (75 + 76) / 2 over the given sets
    assert c.loc[("MCM", "far"), "Δ AUROC"] == 70.0 - 90.0
    with pytest.raises(SelectionError, match="more than one row per OOD set"):
        views.published_comparison(long, pub, {"MCM": {"detector": "mcm"}})  # both methods
    with pytest.raises(SelectionError, match="detector='neglabel'"):
        views.published_comparison(long, pub, {"NegLabel": {"detector": "neglabel"}})


def test_detector_summary_and_headline(long):
    z = long[long.method == "zero-shot"]
    s = views.detector_summary(z)
    assert s.loc["GL-MCM (T=1, λ=1)", "mean AUROC"] == 80.5 and s.loc["MCM (T=1)", "ID acc"] == 60.0
    assert s["Δ AUROC vs MCM (T=1)"].tolist() == [0.0, 10.0]
    h = views.headline(z, ["GL-MCM (T=1, λ=1)", "MCM (T=1)"])
    assert list(h.index) == ["GL-MCM (T=1, λ=1)", "MCM (T=1)"]
    assert h.loc["MCM (T=1)", "near AUROC"] == 71.0 and h.loc["MCM (T=1)", "average FPR95"] == 29.5
    with pytest.raises(SelectionError, match="KNN"):
        views.headline(z, ["MCM (T=1)", "KNN"])
    with pytest.raises(SelectionError, match="more than one step or method"):
        views.detector_summary(long)


def test_family_summary_equals_hand_means():
    rows = [_row("mcm", MCM, "MCM (T=1)", o, a, acc=acc) | {"model": m}
            for m, acc, aurocs in (("small", 40.0, (60.0, 70.0)), ("big", 80.0, (90.0, 94.0)))
            for o, a in zip(("far", "near"), aurocs)]
    s = views.family_summary(pd.DataFrame(rows).reindex(columns=COLUMNS), ["MCM (T=1)"]).set_index("model")
    assert list(s.index) == ["small", "big"]
    assert s.loc["small", "AUROC: MCM (T=1)"] == 65.0 and s.loc["big", "AUROC: MCM (T=1)"] == 92.0
    assert s.loc["big", "acc: MCM (T=1)"] == 80.0


def test_gap_by_method_is_the_seed_mean():
    gaps = pd.DataFrame({"model": ["m"] * 3, "method": ["CMA", "CMA", "FLYP"], "role": ["id"] * 3,
                         "centroid gap": [0.2, 0.4, 0.9], "image·own prompt": [0.1, 0.3, 0.5]})
    g = views.gap_by_method(gaps).set_index("method")
    assert g.loc["CMA", "centroid gap"] == pytest.approx(0.3) and g.loc["FLYP", "image·own prompt"] == 0.5


# -------------------------------------------------------------------------------- notebook 07's views
@pytest.fixture
def attack_long():
    src, rows = "tiny", []
    for step, shift in (("memory bank with the targets", 0.0), ("memory bank without the targets", 2.0)):
        for det, params, label, real, smooth, patchy in (("knn", {"k": 1}, "kNN", 90.0, 55.0, 40.0),
                                                         ("mcm", MCM, "MCM (T=1)", 70.0, 69.0, 60.0)):
            rows += [_row(det, params, label, src, real + shift, step=step, attack="none", attack_steps=0),
                     _row(det, params, label, src, smooth + shift, step=step, attack="smooth", attack_steps=100),
                     _row(det, params, label, src, patchy + shift, step=step, attack="patchy", attack_steps=100),
                     _row(det, params, label, "mnist", 99.0, step=step)]
    for k, a in ((10, 80.0), (100, 55.0)):
        rows.append(_row("knn", {"k": 1}, "kNN", src, a, step="steps", attack="smooth", attack_steps=k))
    for e, a in ((2.0, 85.0), (8.0, 60.0)):
        rows.append(_row("knn", {"k": 1}, "kNN", src, a, step="eps", attack="patchy", attack_steps=50, eps_255=e))
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def test_attack_drop_is_real_minus_attacked(attack_long):
    d = views.attack_drop(attack_long, "memory bank with the targets", "tiny")
    assert list(d.columns) == ["drop (smooth)", "drop (patchy)"]
    assert d.loc["kNN", "drop (smooth)"] == 35.0 and d.loc["MCM (T=1)", "drop (patchy)"] == 10.0
    with pytest.raises(SelectionError, match="ood_set='cifar'"):
        views.attack_drop(attack_long, "memory bank with the targets", "cifar")


def test_attack_auroc_names_sets_for_display_only(attack_long):
    t = views.attack_auroc(attack_long.iloc[:16])
    assert list(t.columns) == ["tiny (real)", "tiny (smooth)", "tiny (patchy)", "mnist"]
    assert t.loc[("memory bank without the targets", "kNN"), "tiny (smooth)"] == "57.0 [56.0, 58.0]"


def test_attack_progress_and_eps(attack_long):
    p = views.attack_progress(attack_long)
    assert p["attack_steps"].tolist() == [10, 100] and p["attack_steps"].dtype.kind == "i"
    e = views.attack_eps(attack_long)
    assert e["ε (/255)"].tolist() == [2.0, 8.0] and e["auroc"].tolist() == [85.0, 60.0]


def test_attack_sets_give_every_set_its_factors():
    real = torch.zeros(2, 3, 4, 4)
    smooth = adversarial.Attack(torch.ones(2, 3, 4, 4), {10: torch.full((2, 3, 4, 4), 0.5)},
                                settings={"lam": 5e3, "steps": 20, "eps": None})
    bounded = adversarial.Attack(torch.ones(2, 3, 4, 4), settings={"lam": 0.0, "steps": 5, "eps": 2 / 255})
    images, factors = adversarial.attack_sets("tiny", real, [smooth, bounded])
    assert list(factors.values()) == [
        {"ood_set": "tiny", "attack": "none", "attack_steps": 0},
        {"ood_set": "tiny", "attack": "smooth", "attack_steps": 20},
        {"ood_set": "tiny", "attack": "patchy", "attack_steps": 5, "eps_255": 2.0}]
    assert set(images) == set(factors)
    _, by_step = adversarial.attack_sets("tiny", None, [smooth], by_step=True)
    assert [f["attack_steps"] for f in by_step.values()] == [10, 20]


def test_rows_of_keeps_the_pairs_order_and_raises_on_a_missing_pair(long):
    got = views.rows_of(long, [("SeTAR", "GL-MCM (T=1, λ=1)"), ("zero-shot", "MCM (T=1)")])
    assert list(got["auroc"]) == [85.0, 86.0, 70.0, 71.0]
    with pytest.raises(SelectionError, match="method='CoOp'"):
        views.rows_of(long, [("CoOp", "MCM (T=1)")])


def test_auroc_gap_points_join_each_model_to_its_gap(long):
    t = pd.concat([long.assign(model="m"), long.assign(model="m+cma", method="CMA (λ=1)")])
    t = t[t.method != "SeTAR"]
    gaps = pd.DataFrame({"model": ["m"] * 4, "method": ["zero-shot", "zero-shot", "CMA (λ=1)", "CMA (λ=1)"],
                         "seed": 0, "role": ["ID", "OOD", "ID", "OOD"], "centroid gap": [0.5, 0.6, 0.2, 0.3]})
    p = views.auroc_gap_points(t, gaps, "MCM (T=1)", 0).set_index("method")
    assert p.loc["zero-shot", "auroc"] == 70.5 and p.loc["CMA (λ=1)", "centroid gap"] == 0.2
    with pytest.raises(SelectionError, match="no ID gap"):
        views.auroc_gap_points(t, gaps[gaps.method == "zero-shot"], "MCM (T=1)", 0)


def test_id_accuracy_and_family_fits():
    rows = [_row("mcm", MCM, "MCM (T=1)", "far", 70.0, acc=61.0), _row("knn", {"k": 1}, "kNN", "far", 80.0, acc=np.nan),
            _row("mcm", MCM, "MCM (T=1)", "near", 71.0, acc=61.0)]
    acc = views.id_accuracy(pd.DataFrame(rows))
    assert acc.to_dict("list") == {"detector_label": ["MCM (T=1)"], "ID test accuracy (%)": [61.0]}
    s = pd.DataFrame({"acc: a": [1.0, 2.0, 3.0, 4.0], "AUROC: b": [3.0, 5.0, 7.0, 9.0]})
    fit = views.family_fits(s, {"a acc vs b": ("acc: a", "AUROC: b")}).iloc[0]
    assert fit["pairing"] == "a acc vs b" and fit["slope"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0)


def test_familiar_gaps_select_by_variant_not_by_set_name():
    rows = [_row("mcm", MCM, "MCM (T=1)", "x", a, method=m, step="familiar: x", variant=v)
            for m, v, a in (("control", "seen", 80.0), ("control", "unseen", 78.0), ("familiar", "seen", 70.0),
                            ("familiar", "unseen", 77.0))]
    g = views.familiar_gaps(pd.DataFrame(rows).reindex(columns=COLUMNS)).iloc[0]
    assert g["familiar − control on seen"] == -10.0 and g["gap change"] == 9.0
    with pytest.raises(SelectionError, match="variant="):
        views.familiar_gaps(pd.DataFrame(rows).reindex(columns=COLUMNS).assign(variant=np.nan))


def test_familiar_auroc_names_the_variant_in_its_columns():
    rows = [_row("mcm", MCM, "MCM (T=1)", "x", a, method=m, step="familiar: x", variant=v)
            for m, v, a in (("control", "seen", 80.0), ("control", "unseen", 78.0), ("familiar", "seen", 70.0))]
    t = views.familiar_auroc(pd.DataFrame(rows).reindex(columns=COLUMNS))
    assert list(t.columns) == ["x (seen)", "x (unseen)"]
    assert t.loc[("familiar: x", "familiar", "MCM (T=1)"), "x (seen)"] == 70.0
    assert np.isnan(t.loc[("familiar: x", "familiar", "MCM (T=1)"), "x (unseen)"])


def test_main_comparison_keeps_factor_rows_apart_and_matches_a_groupby(long):
    t = pd.concat([long.assign(seed=1), long.assign(seed=2, auroc=long["auroc"] + 2)], ignore_index=True)
    t["attack"] = t["attack"].astype(object).where(t.ood_set != "near", "smooth")  # a factor: its rows are their own group, not averaged in
    out = views.main_comparison(t)
    ind = t.groupby(["method", "detector", "ood_set"], sort=False)["auroc"].mean()
    got = out[out.ood_set != "average"].set_index(["method", "detector", "ood_set"])["auroc"]
    assert got.sort_index().equals(ind.sort_index())
    assert list(out[out.method == "SeTAR"].query("detector == 'mcm'")["ood_set"]) == ["far", "average", "near",
                                                                                       "average"]
    no_factors = views.main_comparison(long.drop(columns=["attack", "attack_steps", "eps_255", "variant"]))
    assert no_factors.query("ood_set == 'average' and method == 'SeTAR' and detector == 'mcm'")["auroc"].item() == 75.5
