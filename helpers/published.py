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


def claims(summary: pd.DataFrame, family_fit: pd.DataFrame | None = None, shots: str = "16") -> pd.DataFrame:
    """:data:`CLAIMS` with ``ours`` measured on ``summary`` (:func:`helpers.summary.main_comparison`) and notebook
    03's ``family_fit``. PLP vs MCM: notebook 03's PLP · energy vs MCM with PLP's 5 prompts (full probe data);
    linear probe vs fine-tuning: notebook 04 at ``shots`` shots, both scored by energy on their heads; CMA at
    the published λ = 0.001 with NegLabel. Our R² is the best of notebook 03's pairings."""
    ours = {
        "zero-shot ImageNet accuracy": _avg(summary, "id_acc", notebook="02_zero_shot", method="zero-shot"),
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
    for c in CLAIMS:
        value = next((v for k, v in ours.items() if c["claim"].startswith(k)), np.nan)
        rows.append({**c, "ours": value})
    return pd.DataFrame(rows)[["notebook", "claim", "published", "ours", "source"]]
