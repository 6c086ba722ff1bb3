"""Named views of the canonical long table (:mod:`helpers.evaluation`): every table a notebook shows or saves.

Rows are found by what they are (``notebook``, ``method``, ``shots``, ``detector``, ``params`` and the factor
columns of :data:`helpers.evaluation.FACTORS`) through :func:`helpers.tables.select`, which raises when a
selection matches nothing or more than it should; ``detector_label`` and set names are for display only.

- :func:`main_comparison` notebook 08's aggregation (mean over seeds, average over OOD sets), with
  :func:`row_label`, :func:`by_row` and :func:`comparison_wide` its readable forms;
- :func:`method_table` AUROC and FPR95 ``value [lo, hi]`` per method and detector with the ID accuracy (05);
- :func:`published_comparison` published per-OOD-set FPR95 / AUROC beside ours (02, 05);
- :func:`detector_summary`, :func:`headline` notebook 02's summaries; :func:`rows_of` notebook 04's headline rows;
- :func:`id_accuracy`, :func:`family_summary`, :func:`family_fits`, :func:`familiar_auroc`, :func:`familiar_gaps`
  notebook 03's tables; :func:`auroc_gap_points` and :func:`gap_by_method` notebook 06's (and 08's);
- :func:`setar_published_comparison` notebook 05's published table;
- :func:`attack_auroc`, :func:`attack_drop`, :func:`attack_progress`, :func:`attack_eps` notebook 07's views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .evaluation import FACTORS
from .tables import SelectionError, average_ood, select, wide

SUMMARY_METRICS = ["auroc", "auroc_lo", "auroc_hi", "fpr95", "fpr95_lo", "fpr95_hi", "id_acc"]
KEYS = ["notebook", "model", "method", "shots", "detector", "detector_label", "id_set", "ood_set"]
MOS = ("inaturalist", "sun", "places", "textures")


# ------------------------------------------------------------------------------------ notebook 08
def main_comparison(scores: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Every ``step == "main"`` row (of ``models`` only, when given), one row per notebook, model, method, shots,
    detector, OOD set and factor values (:data:`~helpers.evaluation.FACTORS`, those that any row sets): the mean over seeds of AUROC, FPR95 and ID accuracy, the mean of the per-seed bootstrap
    CI bounds, the seed std of AUROC and the number of seeds; then one ``average`` row per group (no CI).
    ``params`` is the first seed's (a trained detector's parameters name its seed)."""
    t = scores[scores["step"] == "main"]
    if models is not None:
        t = t[t["model"].isin(models) | t["model"].str.split("+").str[0].isin(models)]
    t = t.astype({"shots": str})
    used = [f for f in FACTORS if f in t.columns and t[f].notna().any()]
    keys = [*KEYS[:-1], *used, KEYS[-1]]  # a row with a factor is its own group
    g = t.groupby(keys, sort=False, dropna=False)
    out = g[SUMMARY_METRICS].mean()
    out["auroc_seed_std"] = g["auroc"].std(ddof=1).fillna(0.0)
    out["seeds"] = g["seed"].nunique()
    out["n_id"] = g["n_id"].first()
    out["params"] = g["params"].first()
    out = out.reset_index()
    avg = out.groupby(keys[:-1], sort=False, dropna=False).agg(
        auroc=("auroc", "mean"), fpr95=("fpr95", "mean"), id_acc=("id_acc", "first"), seeds=("seeds", "first"),
        n_id=("n_id", "first"), params=("params", "first")).reset_index().assign(ood_set="average")
    both = pd.concat([out, avg], ignore_index=True)
    order = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, out[keys[:-1]].astype(str).to_numpy())))}
    both["_g"] = [order[tuple(r)] for r in both[keys[:-1]].astype(str).to_numpy()]
    return both.sort_values(["_g"], kind="stable").drop(columns="_g").reset_index(drop=True)


def row_label(table: pd.DataFrame) -> pd.Series:
    """``"NN · method (k-shot) · detector"`` per row, the readable key of the comparison (``zero-shot``, the
    method of every row without training, is left out: ``"02 · MCM (T=1)"``)."""
    shots = table["shots"].astype(str).map(lambda s: "" if s in ("0", "nan") else f" ({s}-shot)" if s.isdigit()
                                           else f" ({s})")
    method = (table["method"] + shots + " · ").where(table["method"] != "zero-shot", "")
    return table["notebook"].str[:2] + " · " + method + table["detector_label"]


def by_row(summary: pd.DataFrame, metric: str = "auroc", ci: bool = False, decimals: int = 1) -> pd.DataFrame:
    """:func:`helpers.tables.wide` of ``summary`` with one row per :func:`row_label` and the average last."""
    out = wide(summary.assign(row=row_label(summary)), metric, index="row", ci=ci, decimals=decimals)
    return out[[c for c in out.columns if c != "average"] + ["average"]]


def comparison_wide(summary: pd.DataFrame, metric: str = "auroc", decimals: int = 1) -> pd.DataFrame:
    """``value [lo, hi]`` per OOD set and the average (no CI), one row per :func:`row_label`, and the ID accuracy."""
    acc = summary.assign(row=row_label(summary)).groupby("row", sort=False)["id_acc"].first().round(decimals)
    return by_row(summary, metric, ci=True, decimals=decimals).assign(**{"ID acc": acc}).reset_index()


# ------------------------------------------------------------------------------- per-notebook views
def method_table(long: pd.DataFrame, metrics: Sequence[str] = ("auroc", "fpr95"),
                 index: Sequence[str] = ("method", "detector_label")) -> pd.DataFrame:
    """``value [lo, hi]`` of each metric per OOD set and the average (column level 0: the metric), one row per
    ``index`` group (order kept), and the ID accuracy as ``("", "ID acc")``."""
    index = list(index)
    table = pd.concat({k: wide(long, k, index=index, ci=True) for k in metrics}, axis=1)
    acc = long.drop_duplicates(index).set_index(index)["id_acc"]
    table[("", "ID acc")] = acc.reindex(table.index).round(1)
    return table


def flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A two-level column table (as :func:`method_table`) with ``"<level 0> <level 1>"`` column names and its
    index as columns: the form saved to CSV."""
    return table.set_axis([f"{a} {b}".strip() for a, b in table.columns], axis=1).reset_index()


def published_comparison(table: pd.DataFrame, published: pd.DataFrame, rows: Mapping[str, Mapping | None],
                         mos: Sequence[str] = MOS) -> pd.DataFrame:
    """Published FPR95 / AUROC (``published``: method, source, ood, fpr95, auroc) beside ours. ``rows`` maps a
    published method to the :func:`~helpers.tables.select` criteria of our rows run as published (e.g.
    ``{"detector": "mcm", "params": {"T": 1.0, "prompts": "single"}}``; None leaves the method out); each must
    match one row per OOD set. Our ``average`` is over the MOS sets ``mos``, as published, and only when all
    of them were evaluated."""
    ours = []
    for method, criteria in rows.items():
        if criteria is None:
            continue
        got = select(table[table["ood_set"] != "average"], **criteria)
        if got["ood_set"].duplicated().any():
            raise SelectionError(f"the rows for {method!r} ({dict(criteria)}) hold more than one row per OOD set: "
                                 f"{got[['method', 'detector_label', 'ood_set']].to_dict('records')[:6]}")
        avg = average_ood(got, ood_sets=list(mos))
        ours.append(avg[avg["ood_set"].isin([*mos, "average"])].assign(method=method))
    keep = ["method", "ood_set", "fpr95", "auroc"]
    ours = pd.concat(ours, ignore_index=True)[keep] if ours else pd.DataFrame(columns=keep)
    pub = published[published["method"].isin([m for m, c in rows.items() if c is not None])]
    out = pub.merge(ours.rename(columns={"ood_set": "ood"}), on=["method", "ood"], how="left",
                    suffixes=(" published", " ours"))
    out["Δ AUROC"] = out["auroc ours"] - out["auroc published"]
    return out[["method", "source", "ood", "fpr95 published", "fpr95 ours", "auroc published", "auroc ours",
                "Δ AUROC"]]


def family_summary(table: pd.DataFrame, accuracy_of: Sequence[str]) -> pd.DataFrame:
    """One row per family member (model, order kept): the ID accuracy of the detectors ``accuracy_of`` (labels
    naming their classifiers in the column) and the AUROC of every detector averaged over the OOD sets."""
    avg = average_ood(table)
    avg = avg[avg["ood_set"] == "average"]
    if avg.duplicated(["model", "detector_label"]).any():
        raise SelectionError("family_summary: a model has two rows for one detector (several steps or methods?)")
    acc = select(avg, detector_label=list(accuracy_of)).pivot_table(
        index="model", columns="detector_label", values="id_acc", sort=False)
    auroc = avg.pivot_table(index="model", columns="detector_label", values="auroc", sort=False)
    out = pd.concat([acc.add_prefix("acc: "), auroc.add_prefix("AUROC: ")], axis=1)
    return out.loc[list(dict.fromkeys(table["model"]))].reset_index()


def familiar_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """Per experiment (``step``) and detector, from :func:`helpers.families.familiar_experiment` rows (methods
    ``control`` / ``familiar``, ``variant`` ``seen`` / ``unseen``): AUROC gaps *unseen − seen* of each model,
    familiar − control on each test set, and the change of the gap (familiar − control; > 0: familiarity hurts
    the seen classes more than the unseen ones)."""
    t = select(table, variant=["seen", "unseen"], method=["control", "familiar"])
    if t.duplicated(["step", "detector_label", "method", "variant"]).any():
        raise SelectionError("familiar_gaps: more than one row per experiment, detector, model and test set")
    a = t.pivot_table(index=["step", "detector_label"], columns=["method", "variant"], values="auroc", sort=False)
    gaps = pd.DataFrame({
        "control: unseen − seen": a[("control", "unseen")] - a[("control", "seen")],
        "familiar: unseen − seen": a[("familiar", "unseen")] - a[("familiar", "seen")],
        "familiar − control on seen": a[("familiar", "seen")] - a[("control", "seen")],
        "familiar − control on unseen": a[("familiar", "unseen")] - a[("control", "unseen")],
    })
    gaps["gap change"] = gaps["familiar: unseen − seen"] - gaps["control: unseen − seen"]
    return gaps.reset_index()


# ------------------------------------------------------------------------------------- notebook 07
def set_name(table: pd.DataFrame) -> pd.Series:
    """The display name of each row's OOD set: the dataset, with its attack (``"none"``: ``real``) or its
    variant in brackets."""
    attack = table["attack"].where(table["attack"] != "none", "real")
    tag = attack.where(attack.notna(), table["variant"])
    return table["ood_set"].where(tag.isna(), table["ood_set"] + " (" + tag.astype(str) + ")")


def familiar_auroc(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Notebook 03's familiar-OOD rows: ``metric`` per experiment, model and detector, one column per test set
    named by :func:`set_name` (``tiny-imagenet-near (seen)``); no average (the sets are of different kinds)."""
    return wide(table.assign(ood_set=set_name(table)), metric, index=["step", "method", "detector_label"],
                average=False)


def attack_auroc(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """``value [lo, hi]`` per step (memory bank) and detector, one column per OOD set named by :func:`set_name`
    (the series' own sets and the attacked ones; no average, the sets are of different kinds)."""
    return wide(table.assign(ood_set=set_name(table)), metric, index=["step", "detector_label"], ci=True,
                average=False)


def attack_drop(table: pd.DataFrame, step: str, source: str) -> pd.DataFrame:
    """AUROC of the real source images minus that of each attack's images, per detector (rows of ``step``)."""
    t = select(table, step=step, ood_set=source)
    real = select(t, attack="none").set_index("detector_label")["auroc"]
    out = {}
    for attack in dict.fromkeys(t["attack"].dropna()):
        if attack != "none":
            a = select(t, attack=attack, expect=len(real)).set_index("detector_label")["auroc"]
            out[f"drop ({attack})"] = real - a.reindex(real.index)
    return pd.DataFrame(out).rename_axis("detector_label")


def attack_progress(table: pd.DataFrame, step: str = "steps") -> pd.DataFrame:
    """The rows of ``step`` with an attack, with ``attack_steps`` as integers (AUROC against attack steps)."""
    t = select(table, step=step)
    t = t[t["attack"].notna()]
    return t.assign(attack_steps=t["attack_steps"].astype(int))


def attack_eps(table: pd.DataFrame, step: str = "eps") -> pd.DataFrame:
    """AUROC with its CI per detector and L∞ bound ε (in 1/255) of the ``step`` rows."""
    t = select(table, step=step)
    t = t[t["eps_255"].notna()]
    return t.rename(columns={"eps_255": "ε (/255)"})[["detector_label", "ε (/255)", "auroc", "auroc_lo", "auroc_hi"]]


def setar_published_comparison(long: pd.DataFrame, rows: Mapping[str, Mapping | None]) -> pd.DataFrame:
    """:func:`published_comparison` against the SeTAR paper's table (its SeTAR rows and the MCM / GL-MCM rows
    it re-ran); ``rows`` maps a published method to the criteria of our rows (``method``, ``detector``, ...)."""
    from .detectors.glmcm import PUBLISHED as GLMCM
    from .detectors.mcm import PUBLISHED as MCM
    from .setar import PUBLISHED as SETAR

    published = pd.DataFrame(SETAR + [r for r in MCM + GLMCM if r["source"].startswith("SeTAR")])
    return published_comparison(long, published, rows)


def detector_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per detector (label, order kept): mean AUROC and FPR95 over the OOD sets, ID accuracy, and the
    AUROC difference to the first detector."""
    avg = select(average_ood(table), ood_set="average")
    if avg["detector_label"].duplicated().any():
        raise SelectionError("detector_summary: a detector has rows of more than one step or method; select first")
    best = avg.set_index("detector_label")
    return pd.DataFrame({"mean AUROC": best["auroc"], "mean FPR95": best["fpr95"], "ID acc": best["id_acc"],
                         f"Δ AUROC vs {best.index[0]}": best["auroc"] - best["auroc"].iloc[0]})


def headline(table: pd.DataFrame, labels: Sequence[str], metrics: Sequence[str] = ("auroc", "fpr95")) -> pd.DataFrame:
    """Each metric per OOD set and on average (columns ``"<set> <METRIC>"``) for the detectors printed as
    ``labels``, in that order (every label must be in ``table``)."""
    labels = list(dict.fromkeys(labels))
    t = select(table, detector_label=labels)
    missing = [lab for lab in labels if lab not in set(t["detector_label"])]
    if missing:
        raise SelectionError(f"headline: no rows for the detector(s) {missing}; present: "
                             f"{list(dict.fromkeys(table['detector_label']))}")
    return pd.concat([wide(t, k).add_suffix(f" {k.upper()}") for k in metrics], axis=1).loc[labels]


def gap_by_method(gaps: pd.DataFrame, values: Sequence[str] = ("centroid gap", "image·own prompt")) -> pd.DataFrame:
    """Notebook 06's gap table (model, method, role, seed, ...) as the mean over seeds per model, method and role."""
    return gaps.groupby(["model", "method", "role"], sort=False)[list(values)].mean().reset_index()


def rows_of(table: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The rows of each ``(method, detector_label)`` pair, in the order of ``pairs`` (notebook 04's headline);
    a pair without rows raises."""
    return pd.concat([select(table, method=m, detector_label=d) for m, d in pairs])


def auroc_gap_points(long: pd.DataFrame, gaps: pd.DataFrame, label: str, seed: int, role: str = "ID") -> pd.DataFrame:
    """Notebook 06's AUROC-vs-gap points: per model and method of seed ``seed``, the average AUROC of the
    detector ``label`` beside the centroid gap of the ``role`` sets (``gaps``: notebook 06's gap table; a
    fine-tuned model ``<base>+cma`` is named ``<base>`` there). Every point must have its gap."""
    avg = select(average_ood(long), ood_set="average", detector_label=label, seed=seed)
    avg = avg[["model", "method", "seed", "auroc"]]
    avg = avg.assign(model=avg["model"].str.replace(r"\+cma$", "", regex=True))
    gap = select(gaps, role=role, seed=seed)[["model", "method", "seed", "centroid gap"]]
    out = avg.merge(gap, on=["model", "method", "seed"], how="left", validate="one_to_one")
    if out["centroid gap"].isna().any():
        raise SelectionError(f"auroc_gap_points: no {role} gap for "
                             f"{out[out['centroid gap'].isna()][['model', 'method']].to_dict('records')}")
    return out


def id_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """The ID test accuracy of each detector with a classifier (label, order kept; the first row of each)."""
    t = table.dropna(subset=["id_acc"]).drop_duplicates("detector_label")
    return t[["detector_label", "id_acc"]].rename(columns={"id_acc": "ID test accuracy (%)"}).reset_index(drop=True)


def family_fits(summary: pd.DataFrame, pairings: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """One row per pairing ``name -> (accuracy column, AUROC column)`` of :func:`family_summary`: the
    least-squares line of AUROC against accuracy across the members (:func:`helpers.families.fit_line`)."""
    from .families import fit_line

    return pd.DataFrame([{"pairing": p, **fit_line(summary[x], summary[y])} for p, (x, y) in pairings.items()])
