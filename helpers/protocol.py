"""Protocol sensitivity: the same detector, different numbers, because of choices outside the method.

Four conventions move MCM's numbers without changing the method (``../shared/REFERENCE.md``): the softmax
temperature (MCM's T = 1 vs CLIP's T = 0.01), the prompt set, the resize interpolation (MCM's code: bilinear;
open_clip: bicubic) and the FPR95 convention (positive class, cut-off). MCM's code also computes energy and
entropy at its T = 1 on raw cosines, where papers that use CLIP's logits take T = 0.01.

:func:`variants` lists the grid (one change at a time from the published setting, then OpenOOD's choices all
at once, then energy and entropy at both temperatures); :func:`run_grid` evaluates each with
:func:`helpers.evaluation.evaluate` (``step="protocol"``, each variant named in the ``variant`` column, so they land
in the canonical table);
:func:`sensitivity_table` is the view with the change of the mean AUROC / FPR95 against each detector's
published row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .benchmark import Benchmark
from .evaluation import evaluate
from .tables import average_ood

PUBLISHED = {"name": "mcm", "T": 1.0, "prompts": "single"}


def variants(prompt_sets: Sequence[str] = ("single", "plp5", "openai80")) -> list[dict]:
    """The grid: dicts with ``factor``, ``detector`` (a spec), ``interpolation``, ``fpr_positive``, ``fpr_method``
    and ``baseline`` (True for the published row each detector's changes are measured against)."""
    base = {"detector": PUBLISHED, "interpolation": "bilinear", "fpr_positive": "id", "fpr_method": "nearest"}
    rows = [{"factor": "baseline: MCM as published", **base, "baseline": True},
            {"factor": "temperature", **base, "detector": {**PUBLISHED, "T": 0.01}},
            {"factor": "temperature: the model's own scale", **base, "detector": {**PUBLISHED, "T": "model"}}]
    rows += [{"factor": f"prompt set: {p}", **base, "detector": {**PUBLISHED, "prompts": p}} for p in prompt_sets
             if p != "single"]
    rows += [{"factor": "interpolation", **base, "interpolation": "bicubic"},
             {"factor": "FPR95 positive class", **base, "fpr_positive": "ood"},
             {"factor": "FPR95 cut-off", **base, "fpr_method": "interpolate"},
             {"factor": "all: OpenOOD / pytorch-ood style", "interpolation": "bicubic", "fpr_positive": "ood",
              "fpr_method": "nearest", "detector": {**PUBLISHED, "T": 0.01,
                                                    "prompts": "openai80" if "openai80" in prompt_sets else "single"}}]
    for name in ("energy", "entropy"):
        rows += [{"factor": f"{name} as in MCM's code", **base, "detector": {"name": name, "T": 1.0}, "baseline": True},
                 {"factor": f"{name}: temperature", **base, "detector": {"name": name, "T": 0.01}}]
    assert len({r["factor"] for r in rows}) == len(rows), "every variant needs its own name (its row key)"
    return [{"baseline": False, **r} for r in rows]


def run_grid(benches: Mapping[str, Benchmark], grid: Sequence[dict], *, results_dir=None, n_boot: int = 0
             ) -> pd.DataFrame:
    """Evaluate every variant of ``grid`` on ``benches[variant["interpolation"]]`` (one benchmark per resize
    interpolation, same images); the long-table rows: ``step="protocol"``, the variant's name in the ``variant``
    factor column."""
    out = []
    for v in grid:
        missing = v["interpolation"] not in benches
        if missing:
            raise KeyError(f"no benchmark with {v['interpolation']!r} resizing; have {sorted(benches)}")
        bench = benches[v["interpolation"]]
        e = evaluate([v["detector"]], bench, results_dir=results_dir, n_boot=n_boot, step="protocol",
                     fpr_positive=v["fpr_positive"], fpr_method=v["fpr_method"],
                     factors={name: {"variant": v["factor"]} for name in bench.ood})
        out.append(e.table.assign(factor=v["factor"], interpolation=v["interpolation"], baseline=v["baseline"]))
    return pd.concat(out, ignore_index=True)


def sensitivity_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per variant: its setting, ID accuracy, mean AUROC / FPR95 over the OOD sets, and their change
    from the published row of the same detector (``Δ``; the first rows of each detector are the baselines)."""
    avg = average_ood(rows.drop(columns=["factor", "interpolation", "baseline"]))
    avg = avg[avg["ood_set"] == "average"].reset_index(drop=True)
    meta = rows.drop_duplicates("variant").reset_index(drop=True)
    out = pd.DataFrame({
        "factor": meta["factor"], "detector": avg["detector_label"], "interpolation": meta["interpolation"],
        "FPR95 convention": meta["fpr_positive"] + " positive, " + meta["fpr_method"],
        "ID acc": avg["id_acc"], "avg AUROC": avg["auroc"], "avg FPR95": avg["fpr95"]})
    base = {}
    for i, r in meta.iterrows():
        if r["baseline"]:
            base[r["detector"]] = i
    ref = [base.get(d, 0) for d in meta["detector"]]
    out["Δ avg AUROC"] = out["avg AUROC"].values - out["avg AUROC"].values[ref]
    out["Δ avg FPR95"] = out["avg FPR95"].values - out["avg FPR95"].values[ref]
    return out
