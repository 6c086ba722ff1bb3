"""Published anchor numbers (``../shared/REFERENCE.md``) that are not per-OOD-set rows, as claims beside ours.

Per-OOD-set FPR95 / AUROC rows live beside their detector (``PUBLISHED`` in ``helpers/detectors/mcm.py``,
``glmcm.py``, ``neglabel.py`` and ``helpers/setar/edit.py``); this module holds the scalar claims of PLP, the
fine-tuning study and CMA, and :func:`claims` measures the same quantity on a run's tables. The published values
are ImageNet-1k with the stated backbone: they are comparable with ours only in the paper profile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import SelectionError, select

CLAIMS = [
    {"notebook": "01_features", "claim": "zero-shot ImageNet accuracy, ViT-B-16/openai (%)", "published": 63.98,
     "source": "SeTAR re-run (Li et al., NeurIPS 2024)", "key": "zero-shot accuracy"},
    {"notebook": "03_probes", "claim": "R² of ID accuracy vs OOD AUROC across CLIP models", "published": 0.92,
     "source": "PLP (Adaloglou et al., TMLR 2024): R² ≥ 0.92 on 4 benchmarks", "key": "R²"},
    {"notebook": "03_probes", "claim": "PLP minus MCM, average AUROC (points)", "published": 3.4,
     "source": "PLP (Adaloglou et al., TMLR 2024), ViT-G, 5 ImageNet benchmarks", "key": "PLP minus MCM"},
    {"notebook": "04_finetune", "claim": "linear probe minus full fine-tuning, average AUROC (points)",
     "published": 7.3,
     "source": "PLP (Adaloglou et al., TMLR 2024), ViT-H", "key": "linear probe minus full"},
    {"notebook": "06_cma", "claim": "CMA + NegLabel, average AUROC over the MOS sets (%)", "published": 95.13,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16", "key": "CMA + NegLabel, average AUROC"},
    {"notebook": "06_cma", "claim": "CMA + NegLabel, average FPR95 over the MOS sets (%)", "published": 19.93,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16", "key": "CMA + NegLabel, average FPR95"},
    {"notebook": "06_cma", "claim": "CMA, ID accuracy (%)", "published": 82.64,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16", "key": "CMA, ID accuracy"},
]


# how ours is measured: claim key -> (metric, [(sign, select criteria of one summary row), ...]); the rows are
# the ``average`` rows of :func:`helpers.views.main_comparison`, found by method, detector and parameters
PLP_ENERGY = {"detector": "plp", "params": {"score": "energy"}}
MCM_PLP5 = {"detector": "mcm", "params": {"T": 1.0, "prompts": "plp5"}}
CMA_NEGLABEL = {"notebook": "06_cma", "lam": 0.001, "detector": "neglabel",
                "params": {"prompts": "nice", "mining": "fixed"}}  # one word list, as CMA's code


def _measures(shots: str) -> dict[str, tuple[str, list[tuple[int, dict]]]]:
    probe = {"notebook": "04_finetune", "shots": shots}
    return {
        "PLP minus MCM": ("auroc", [(1, {"notebook": "03_probes", "method": "zero-shot", **PLP_ENERGY}),
                                    (-1, {"notebook": "03_probes", "method": "zero-shot", **MCM_PLP5})]),
        "linear probe minus full": ("auroc", [
            (1, {**probe, "method": "linear probe", "detector": "linear_probe", "params": {"score": "energy"}}),
            (-1, {**probe, "method": "fine-tune", "detector": "head", "params": {"score": "energy"}})]),
        "CMA + NegLabel, average AUROC": ("auroc", [(1, CMA_NEGLABEL)]),
        "CMA + NegLabel, average FPR95": ("fpr95", [(1, CMA_NEGLABEL)]),
        "CMA, ID accuracy": ("id_acc", [(1, CMA_NEGLABEL)]),
    }


def _measure(avg: pd.DataFrame, metric: str, terms: list[tuple[int, dict]]) -> float:
    """The signed sum of ``metric`` over one summary row per term; NaN when a term's notebook or method is not
    in ``avg`` (that notebook was not part of the run); raises when it is there but the row is not, or when
    more than one row matches."""
    total = 0.0
    for sign, criteria in terms:
        present = {k: v for k, v in criteria.items() if k in ("notebook", "method", "lam") and k in avg.columns}
        if not select_any(avg, **present):
            return np.nan
        total += sign * float(select(avg, expect=1, **criteria)[metric].iloc[0])
    return total


def select_any(table: pd.DataFrame, **criteria) -> bool:
    """Whether any row of ``table`` matches ``criteria`` (:func:`helpers.tables.select`)."""
    try:
        select(table, **criteria)
    except SelectionError:
        return False
    return True


def _zero_shot_accuracy(summary: pd.DataFrame) -> float:
    """The ID accuracy of zero-shot MCM with the single prompt, from the first notebook that has it."""
    avg = summary[summary["ood_set"] == "average"]
    criteria = {"method": "zero-shot", "detector": "mcm", "params": {"T": 1.0, "prompts": "single"}}
    return float(select(avg, **criteria)["id_acc"].iloc[0]) if select_any(avg, **criteria) else np.nan


def _largest_shots(summary: pd.DataFrame) -> str:
    """The largest training setting of the linear-probe rows: ``"full"`` when present, else the most shots."""
    got = set(summary.loc[summary["method"] == "linear probe", "shots"].astype(str))
    return "full" if "full" in got else max(got, key=int, default="16")


def claims(summary: pd.DataFrame, family_fit: pd.DataFrame | None = None, shots: str | None = None,
           notebook: str | None = None) -> pd.DataFrame:
    """:data:`CLAIMS` with ``ours`` measured on ``summary`` (:func:`helpers.views.main_comparison`) and notebook
    03's ``family_fit``. PLP vs MCM: notebook 03's PLP · energy vs MCM with PLP's 5 prompts (full probe data);
    linear probe vs fine-tuning: notebook 04 at ``shots`` shots (None: its largest setting, as PLP compares models
    trained on all of ImageNet), both scored by energy on their heads; CMA at the published λ = 0.001 with
    NegLabel (its "nice" prompts). Our R² is the best of notebook 03's pairings; the zero-shot accuracy is that
    of MCM's classifier with the single prompt, from whichever notebook ``summary`` holds it first. Rows are found
    by method, detector and parameters (:func:`helpers.tables.select`), never by labels.
    ``notebook`` (e.g. ``"03_probes"``) keeps only that notebook's claims: a notebook passes its own rows."""
    shots = _largest_shots(summary) if shots is None else str(shots)
    avg = summary[summary["ood_set"] == "average"]
    ours = {"zero-shot accuracy": _zero_shot_accuracy(summary),
            "R²": float(family_fit["r2"].max()) if family_fit is not None and len(family_fit)
            else np.nan,
            **{k: _measure(avg, metric, terms) for k, (metric, terms) in _measures(shots).items()}}
    rows = []
    for c in CLAIMS if notebook is None else [c for c in CLAIMS if c["notebook"] == notebook]:
        rows.append({**c, "ours": ours[c["key"]]})
    return pd.DataFrame(rows)[["notebook", "claim", "published", "ours", "source"]]


def beside(long: pd.DataFrame, notebook: str, results_dir=None, enabled: bool = True,
           family_fit: pd.DataFrame | None = None, shots: str | None = None) -> pd.DataFrame | None:
    """A notebook's own claims (``notebook``, e.g. ``"03_probes"``) beside ours, measured on its long table
    ``long`` (the rows of its ``evaluate`` calls, no average rows), saved as ``published_claims`` in
    ``results_dir``. With ``enabled=False`` (the teaching profile: the numbers are not comparable) it says so and
    returns None."""
    if not enabled:
        print("compare_published is False: the published ImageNet anchors are compared in the paper profile only.")
        return None
    from .report import save_table
    from .views import main_comparison

    table = claims(main_comparison(long), family_fit, shots, notebook)
    if results_dir is not None:
        save_table(table, "published_claims", results_dir)
    return table
