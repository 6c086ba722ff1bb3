"""Views of the canonical long table (:mod:`helpers.evaluation`) and the statistics that compare methods; the
named per-notebook views built on these live in :mod:`helpers.views`.

- :func:`select` the rows with given key values (``detector``, ``params``, ``method``, factor columns ...), raising
  :class:`SelectionError` that names the criteria when none, or more than ``expect``, match: every join and
  filter of the package goes through it, never through display labels;
- :func:`average_ood` adds the mean over OOD sets (``ood_set = "average"``), the one place that averages;
- :func:`wide` a detector x OOD-set table of one metric (optionally ``value [lo, hi]`` text);
- :func:`seed_summary` mean and sample std over seeds, :func:`mean_std_table` its readable ``mean ± std`` form;
- :func:`difference` two detectors side by side per OOD set with their difference;
- :func:`paired_claim` / :func:`claims_table`: does method A beat method B? The paired design of the few-shot
  protocol: each seed draws one k-shot split that both methods train on, and both are evaluated on the same
  images. The verdict uses the per-seed AUROC differences (mean over OOD sets) and a percentile-bootstrap CI of
  their mean over seeds in which the *evaluation images* are resampled — the same resample for A and B, so the
  CI measures the difference, not two independent noises.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import ClipOODError
from .evaluation import FACTORS, Evaluation
from .metrics import bootstrap_counts, weighted_auroc

METRICS = ["auroc", "fpr95", "aupr_in", "aupr_out"]
GROUP = ["notebook", "step", "model", "model_id", "method", "shots", "seed", "detector", "detector_label", "params",
         "id_set", *FACTORS, "fpr_positive", "fpr_method"]


class SelectionError(ClipOODError, LookupError):
    """A selection of long-table rows matched none, or not the expected number, of the rows."""


def _matches(column: pd.Series, value) -> pd.Series:
    """Which entries of ``column`` equal ``value``: a list or tuple is any of its values, None / NaN an empty
    entry, a dict (for ``params``) a JSON object that holds every given key with that value; numbers compare
    as numbers, anything else as text (so ``shots=16`` finds ``"16"``)."""
    if isinstance(value, dict):
        parsed = column.map(lambda j: json.loads(j) if isinstance(j, str) else {})
        return parsed.map(lambda d: all(k in d and d[k] == v for k, v in value.items())).astype(bool)
    if isinstance(value, (list, tuple, set)):
        return np.logical_or.reduce([_matches(column, v) for v in value]) if value else column.map(lambda _: False)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return column.isna()
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and \
            pd.api.types.is_numeric_dtype(column):
        return pd.Series(np.isclose(column.astype(float), float(value), rtol=1e-9, atol=0), index=column.index)
    return column.notna() & (column.astype(str) == str(value))


def select(table: pd.DataFrame, expect: int | None = None, **criteria) -> pd.DataFrame:
    """The rows of ``table`` whose columns hold every ``criteria`` value (see :func:`_matches`: a dict for
    ``params`` matches the detector parameters it names, a list any of its values). Raises
    :class:`SelectionError` naming the criteria when no row matches, or when ``expect`` is given and another
    number of rows does; an unknown column is a :class:`KeyError`. Order of the table kept."""
    unknown = [c for c in criteria if c not in table.columns]
    if unknown:
        raise KeyError(f"select: the table has no column {unknown} (columns: {list(table.columns)})")
    keep = pd.Series(True, index=table.index)
    for column, value in criteria.items():
        keep &= _matches(table[column], value)
    out = table[keep]
    if len(out) == 0 or (expect is not None and len(out) != expect):
        wanted = "at least one row" if expect is None else f"{expect} row(s)"
        present = {c: list(dict.fromkeys(table[c].astype(str)))[:8] for c in criteria}
        raise SelectionError(f"select({', '.join(f'{k}={v!r}' for k, v in criteria.items())}) found {len(out)} "
                             f"of {len(table)} rows, expected {wanted}. Values present: {present}")
    return out


def average_ood(table: pd.DataFrame, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
    """``table`` with one more row per group: ``ood_set="average"``, the mean of every metric over the OOD sets
    (``ood_sets`` to restrict them; a group that lacks one of them gets no average). CIs are left empty."""
    t = table[table["ood_set"] != "average"]
    if ood_sets is not None:
        t = t[t["ood_set"].isin(ood_sets)]
    keys = [c for c in GROUP if c in t.columns]
    g = t.groupby(keys, sort=False, dropna=False)
    avg = g[METRICS].mean()
    avg["id_acc"] = g["id_acc"].first()
    avg["n_ood"] = g["n_ood"].sum()
    avg["n_id"] = g["n_id"].first()
    if ood_sets is not None:
        avg = avg[g.size() == len(ood_sets)]
    avg = avg.reset_index().assign(ood_set="average")
    return pd.concat([table, avg], ignore_index=True).reindex(columns=table.columns)


def wide(table: pd.DataFrame, metric: str = "auroc", index: str | list[str] = "detector_label",
         columns: str = "ood_set", ci: bool = False, average: bool = True, decimals: int = 1) -> pd.DataFrame:
    """One row per ``index``, one column per OOD set (and ``average``), order of appearance kept. With ``ci``
    the cells are ``"value [lo, hi]"`` text."""
    t = average_ood(table) if average and not (table["ood_set"] == "average").any() else table
    index = [index] if isinstance(index, str) else list(index)
    if ci:
        fmt = f"{{:.{decimals}f}}".format
        t = t.assign(value=[fmt(v) if np.isnan(lo) else f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"
                            for v, lo, hi in zip(t[metric], t[f"{metric}_lo"], t[f"{metric}_hi"])])
        metric = "value"
    dup = t.duplicated([*index, columns], keep=False)
    if dup.any():
        raise SelectionError(f"wide: {int(dup.sum())} rows share an {index} x {columns!r} cell, e.g. "
                             f"{t.loc[dup, [*index, columns]].head(2).to_dict('records')}; select the rows first or "
                             f"add the column that tells them apart to index")
    out = t.pivot_table(index=index, columns=columns, values=metric, aggfunc="first", sort=False)
    out.columns.name = None
    return out


def seed_summary(table: pd.DataFrame, by: Sequence[str] = ("method", "shots", "detector_label", "ood_set"),
                 values: Sequence[str] = ("id_acc", "auroc", "fpr95")) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of ``values`` over the rows of each ``by``
    group (the seeds): columns ``<value>_mean``, ``<value>_std`` and ``seeds``; group order kept."""
    g = table.groupby(list(by), sort=False)
    out = g[list(values)].agg(["mean", "std"])
    out.columns = [f"{v}_{s}" for v, s in out.columns]
    out = out.fillna({f"{v}_std": 0.0 for v in values})
    out["seeds"] = g.size()
    return out.reset_index()


def mean_std_table(summary: pd.DataFrame, index: list[str], columns: str = "ood_set",
                   values: Sequence[str] = ("auroc", "fpr95"), per_row: Sequence[str] = ("id_acc",),
                   decimals: int = 1) -> pd.DataFrame:
    """:func:`seed_summary` as ``"mean ± std"`` text: one row per ``index`` group; first the ``per_row`` values
    (equal for every ``columns`` entry, e.g. ID accuracy), then ``"<entry> <value>"`` columns. A single seed
    prints its value alone (no ``± 0.0``, which would read as a measured precision)."""
    fmt = f"{{:.{decimals}f}}".format
    text = {v: [fmt(m) if n == 1 else f"{fmt(m)} ± {fmt(s)}" for m, s, n in
                zip(summary[f"{v}_mean"], summary[f"{v}_std"], summary["seeds"])] for v in [*per_row, *values]}
    long = summary[index + [columns]].assign(**text)
    out = long.drop_duplicates(index)[index + list(per_row)].reset_index(drop=True)
    for entry in dict.fromkeys(summary[columns]):
        part = long[long[columns] == entry][index + list(values)]
        out = out.merge(part.rename(columns={v: f"{entry} {v}" for v in values}), on=index, how="left")
    return out


def detector_rows(table: pd.DataFrame, spec, **criteria) -> pd.DataFrame:
    """The rows of one detector: ``spec`` is a detector name or spec (``"mcm"``, ``{"name": "mcm", "T": 1.0}``),
    matched on ``detector`` and the parameters it names (:func:`select`), plus any other ``criteria``. When that
    leaves several detectors, the one whose other parameters are the detector's defaults is taken
    (``{"name": "mcm", "T": 1.0}`` is MCM with its default prompts); otherwise :class:`SelectionError`."""
    from .detectors import get

    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    named = {k: v for k, v in spec.items() if k != "name"}
    rows = select(table, detector=spec["name"], **({"params": named} if named else {}), **criteria)
    if rows["detector_label"].nunique() > 1:
        defaults = {k: v for k, v in json.loads(get(spec).params_json()).items() if k not in named}
        rows = rows[_matches(rows["params"], defaults)]
        if rows["detector_label"].nunique() != 1:
            raise SelectionError(f"detector spec {spec} matches several detectors and none by its defaults "
                                 f"{defaults}; name more of its parameters")
    return rows


def difference(table: pd.DataFrame, a, b, metric: str = "auroc") -> pd.DataFrame:
    """Detectors ``a`` and ``b`` (specs, found by :func:`detector_rows`) per OOD set and on average, and ``a − b``; rows
    named by their labels."""
    ra, rb = detector_rows(table, a), detector_rows(table, b)
    la, lb = ra["detector_label"].iloc[0], rb["detector_label"].iloc[0]
    w = wide(pd.concat([ra, rb]), metric)
    return pd.DataFrame({la: w.loc[la], lb: w.loc[lb], f"{la} − {lb}": w.loc[la] - w.loc[lb]}).T


# ---------------------------------------------------------------------------------------- paired claims
def paired_claim(a: Sequence[Evaluation], b: Sequence[Evaluation], label_a: str, label_b: str, *,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Does detector ``label_a`` of the evaluations ``a`` have a higher AUROC (mean over OOD sets) than ``label_b``
    of ``b``? ``a`` and ``b`` are paired by seed (a single evaluation in ``b``, e.g. zero-shot, pairs with every
    seed of ``a``) and must have scored the same images.

    Returns the per-seed differences (AUROC points), their mean, a percentile-bootstrap CI of the mean and the
    verdict: ``"holds"`` (CI above 0), ``"reversed"`` (below 0) or ``"within noise"``. Each of the ``n_boot``
    resamples draws the evaluation images (the ID and each OOD set, with replacement; the same draw for A, B and
    every seed) *and* the seeds (with replacement), so the CI covers both the image sample and the split-to-split
    variation of the few-shot protocol.
    """
    b_by_seed = {e.seed: e for e in b}
    pairs = [(ea, b_by_seed.get(ea.seed, b[0] if len(b) == 1 else None)) for ea in a]
    if not pairs or any(eb is None for _, eb in pairs):
        raise ValueError(f"cannot pair the seeds {[e.seed for e in a]} of A with {sorted(b_by_seed)} of B")
    ea0, eb0 = pairs[0]
    sets = list(ea0.scores[label_a])
    id_set, ood = ea0.id_set, [s for s in sets if s != ea0.id_set]
    for ea, eb in pairs:
        for s in sets:
            if len(ea.scores[label_a][s]) != len(eb.scores[label_b][s]):
                raise ValueError(f"A and B did not score the same images of {s}")
    rng = np.random.default_rng(seed)
    w = {s: bootstrap_counts(len(ea0.scores[label_a][s]), n_boot, rng) for s in sets}
    ones = {s: np.ones((1, len(ea0.scores[label_a][s]))) for s in sets}

    def diff(weights) -> np.ndarray:  # (B,) mean over OOD sets of AUROC_A - AUROC_B, per pair of evaluations
        out = []
        for ea, eb in pairs:
            sa, sb = ea.scores[label_a], eb.scores[label_b]
            out.append(np.mean([weighted_auroc(sa[id_set], sa[o], weights[id_set], weights[o])
                                - weighted_auroc(sb[id_set], sb[o], weights[id_set], weights[o]) for o in ood], 0))
        return 100 * np.stack(out)  # (pairs, B)

    per_seed = diff(ones)[:, 0]
    seeds = rng.integers(0, len(pairs), (n_boot, len(pairs)))  # (B, pairs) resampled pair indices
    boot = np.take_along_axis(diff(w).T, seeds, axis=1).mean(1)
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    verdict = "holds" if lo > 0 else "reversed" if hi < 0 else "within noise"
    return {"per_seed": per_seed.round(2).tolist(), "difference": float(per_seed.mean()), "ci_lo": float(lo),
            "ci_hi": float(hi), "seeds_positive": int((per_seed > 0).sum()), "seeds": len(per_seed),
            "verdict": verdict}


def _name(method: str, label: str) -> str:
    return label if label.lower().startswith(method.lower()) else f"{method}: {label}"


def claims_table(evaluations: Sequence[Evaluation], claims: Sequence[tuple[str, tuple[str, str], tuple[str, str]]],
                 shots: Sequence[str], **kwargs) -> pd.DataFrame:
    """:func:`paired_claim` for every claim ``(text, (method A, detector A), (method B, detector B))`` and shots
    setting; B's shots are A's unless B is ``"zero-shot"`` (shots 0). One row per claim and setting."""
    rows = []
    for text, (ma, la), (mb, lb) in claims:
        for k in shots:
            a = [e for e in evaluations if e.method == ma and e.shots == str(k)]
            b = [e for e in evaluations if e.method == mb and e.shots == ("0" if mb == "zero-shot" else str(k))]
            if not a or not b:
                continue
            r = paired_claim(a, b, la, lb, **kwargs)
            rows.append({"claim": text, "shots": str(k), "A": _name(ma, la), "B": _name(mb, lb),
                         "AUROC difference": r["difference"], "CI low": r["ci_lo"], "CI high": r["ci_hi"],
                         "per seed": ", ".join(f"{d:+.1f}" for d in r["per_seed"]),
                         "seeds A > B": f"{r['seeds_positive']}/{r['seeds']}", "verdict": r["verdict"]})
    return pd.DataFrame(rows)


def with_params(table: pd.DataFrame, *names: str) -> pd.DataFrame:
    """``table`` with the detector parameters ``names`` as columns (read from the JSON ``params`` column)."""
    parsed = table["params"].map(json.loads)
    return table.assign(**{n: parsed.map(lambda d, n=n: d.get(n)) for n in names})
