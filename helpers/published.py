"""Published anchor numbers (``../shared/REFERENCE.md``) that are not per-OOD-set rows, as claims beside ours.

Per-OOD-set FPR95 / AUROC rows live beside their detector (``PUBLISHED`` in ``helpers/detectors/mcm.py``,
``glmcm.py``, ``neglabel.py`` and ``helpers/setar/edit.py``); this module holds the scalar claims of PLP, the
fine-tuning study and CMA, and :func:`claims` measures the same quantity on a run's tables. The published values
are ImageNet-1k with the stated backbone: they are comparable with ours only in the paper profile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CLAIMS = [
    {"notebook": "01_features", "claim": "zero-shot ImageNet accuracy, ViT-B-16/openai (%)", "published": 63.98,
     "source": "SeTAR re-run (Li et al., NeurIPS 2024)"},
    {"notebook": "03_probes", "claim": "R² of ID accuracy vs OOD AUROC across CLIP models", "published": 0.92,
     "source": "PLP (Adaloglou et al., TMLR 2024): R² ≥ 0.92 on 4 benchmarks"},
    {"notebook": "03_probes", "claim": "PLP minus MCM, average AUROC (points)", "published": 3.4,
     "source": "PLP (Adaloglou et al., TMLR 2024), ViT-G, 5 ImageNet benchmarks"},
    {"notebook": "04_finetune", "claim": "linear probe minus full fine-tuning, average AUROC (points)", "published": 7.3,
     "source": "PLP (Adaloglou et al., TMLR 2024), ViT-H"},
    {"notebook": "06_cma", "claim": "CMA + NegLabel, average AUROC over the MOS sets (%)", "published": 95.13,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16"},
    {"notebook": "06_cma", "claim": "CMA + NegLabel, average FPR95 over the MOS sets (%)", "published": 19.93,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16"},
    {"notebook": "06_cma", "claim": "CMA, ID accuracy (%)", "published": 82.64,
     "source": "CMA (Kim & Hwang, CVPR 2025), ViT-B-16"},
]


def _avg(summary: pd.DataFrame, metric: str = "auroc", **where) -> float:
    t = summary[summary["ood_set"] == "average"]
    for k, v in where.items():
        t = t[t[k].astype(str).str.startswith(str(v))] if k in ("method", "detector_label") else t[t[k].astype(str) == str(v)]
    return float(t[metric].mean()) if len(t) else np.nan


def _zero_shot_accuracy(summary: pd.DataFrame) -> float:
    t = summary[(summary["method"] == "zero-shot") & (summary["detector_label"] == "MCM (T=1)")]
    return float(t["id_acc"].iloc[0]) if len(t) else np.nan


def _largest_shots(summary: pd.DataFrame) -> str:
    """The largest training setting of the linear-probe rows: ``"full"`` when present, else the most shots."""
    got = set(summary.loc[summary["method"] == "linear probe", "shots"].astype(str))
    return "full" if "full" in got else max(got, key=int, default="16")


def claims(summary: pd.DataFrame, family_fit: pd.DataFrame | None = None, shots: str | None = None,
           notebook: str | None = None) -> pd.DataFrame:
    """:data:`CLAIMS` with ``ours`` measured on ``summary`` (:func:`helpers.summary.main_comparison`) and notebook
    03's ``family_fit``. PLP vs MCM: notebook 03's PLP · energy vs MCM with PLP's 5 prompts (full probe data);
    linear probe vs fine-tuning: notebook 04 at ``shots`` shots (None: its largest setting, as PLP compares models
    trained on all of ImageNet), both scored by energy on their heads; CMA at
    the published λ = 0.001 with NegLabel. Our R² is the best of notebook 03's pairings; the zero-shot accuracy is
    that of MCM's classifier with the single prompt, from whichever notebook ``summary`` holds it.
    ``notebook`` (e.g. ``"03_probes"``) keeps only that notebook's claims: a notebook passes its own rows."""
    shots = _largest_shots(summary) if shots is None else str(shots)
    ours = {
        "zero-shot ImageNet accuracy": _zero_shot_accuracy(summary),
        "R² of ID accuracy": float(family_fit["r2"].max()) if family_fit is not None and len(family_fit) else np.nan,
        "PLP minus MCM": (_avg(summary, notebook="03_probes", detector_label="PLP · energy")
                          - _avg(summary, notebook="03_probes", detector_label="MCM (T=1, prompts=plp5)")),
        "linear probe minus full": (
            _avg(summary, notebook="04_finetune", method="linear probe", shots=shots,
                 detector_label="linear probe · energy")
            - _avg(summary, notebook="04_finetune", method="fine-tune", shots=shots, detector_label="head · energy")),
        "CMA + NegLabel, average AUROC": _avg(summary, notebook="06_cma", method="CMA (λ=0.001)",
                                              detector_label="NegLabel"),
        "CMA + NegLabel, average FPR95": _avg(summary, "fpr95", notebook="06_cma", method="CMA (λ=0.001)",
                                              detector_label="NegLabel"),
        "CMA, ID accuracy": _avg(summary, "id_acc", notebook="06_cma", method="CMA (λ=0.001)"),
    }
    rows = []
    for c in CLAIMS if notebook is None else [c for c in CLAIMS if c["notebook"] == notebook]:
        value = next((v for k, v in ours.items() if c["claim"].startswith(k)), np.nan)
        rows.append({**c, "ours": value})
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
    from .summary import main_comparison

    table = claims(main_comparison(long), family_fit, shots, notebook)
    if results_dir is not None:
        save_table(table, "published_claims", results_dir)
    return table
