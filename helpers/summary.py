"""The study's summary (notebook 08): read the tables notebooks 01–07 wrote, check they are current, combine them.

Notebook 08 never recomputes a score. It reads each notebook's canonical long table (``results/NN_*/scores.csv``)
and a few of its views, and refuses to go on when one is missing or was produced by code older than the checkout:

- *missing*: the table file does not exist, or ``results/manifest.json`` does not list the notebook as ``ok``;
- *stale*: the notebook's manifest entry names a commit, and ``helpers/`` or that notebook changed between that
  commit and ``HEAD`` (``git diff``). Without git, or for an entry that names no commit, nothing can be compared;
  a note says so.

Either error names the notebook and the command that regenerates it. :func:`main_comparison` is the one
aggregation: every ``step == "main"`` row of every notebook, mean over seeds (with the per-seed bootstrap CI
bounds averaged and the seed std beside them), plus the average over OOD sets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .errors import ClipOODError

# notebook -> the tables notebook 08 reads from its results folder
NEEDS: dict[str, list[str]] = {
    "02_zero_shot": ["scores.csv"],
    "03_probes": ["scores.csv", "family_correlation.csv", "family_fit.csv"],
    "04_finetune": ["scores.csv"],
    "05_setar": ["scores.csv", "selected_ratios.csv"],
    "06_cma": ["scores.csv", "gap.csv"],
    "07_adversarial": ["auroc_drop.csv", "auroc.csv"],
}
METRICS = ["auroc", "auroc_lo", "auroc_hi", "fpr95", "fpr95_lo", "fpr95_hi", "id_acc"]
KEYS = ["notebook", "model", "method", "shots", "detector_label", "id_set", "ood_set"]


class MissingResultsError(ClipOODError, FileNotFoundError):
    """A table notebook 08 needs was not produced (its notebook did not run, or failed)."""


class StaleResultsError(ClipOODError, RuntimeError):
    """A table was produced by an older version of ``helpers/`` or of its notebook."""


def rerun_hint(notebook: str, profile: str | None = None, results_root: str | Path | None = None) -> str:
    """The runner command that (re)writes ``notebook``'s tables into ``results_root``."""
    from .run import output_dirs

    profile = profile or "teaching"
    prof = f" --profile {profile}" if profile != "teaching" else ""
    out = ""
    if results_root is not None and Path(results_root).resolve() != output_dirs(profile, None)[1].resolve():
        out = f" --out {Path(results_root).resolve().parent}"  # the runner writes <out>/results
    return f"run notebook {notebook} first: python -m helpers.run{prof}{out} --only {notebook[:2]}"


def changed_since(commit: str, notebook: str) -> list[str] | None:
    """Files of ``helpers/`` and ``notebooks/<notebook>.ipynb`` that differ between ``commit`` and ``HEAD``
    (committed changes only); None when git cannot tell (no git, no history, unknown commit)."""
    from . import run  # its git helper: None when git is missing or the command fails

    if run._git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    diff = run._git("diff", "--name-only", commit, "HEAD", "--", "helpers", f"notebooks/{notebook}.ipynb")
    return None if diff is None else diff.stdout.split()


def check_inputs(results_root: str | Path, needs: Mapping[str, Sequence[str]] = NEEDS) -> list[str]:
    """Raise :class:`MissingResultsError` / :class:`StaleResultsError` for the first notebook whose tables are
    missing or stale; return notes (one line each) on what could not be checked."""
    root = Path(results_root)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    profile = manifest.get("profile")
    entries, notes = manifest.get("notebooks", {}), []
    for nb, files in needs.items():
        missing = [f for f in files if not (root / nb / f).is_file()]
        if missing:
            raise MissingResultsError(f"{root / nb / missing[0]} does not exist ({len(missing)} of the tables notebook "
                                      f"08 reads from {nb} are missing). Fix: {rerun_hint(nb, profile, root)}")
        entry = entries.get(nb)
        if entry is None:
            notes.append(f"{nb}: not in {manifest_path}, so its age cannot be checked")
            continue
        if entry.get("status") != "ok":
            raise MissingResultsError(f"{manifest_path} says {nb} {entry.get('status')}: {entry.get('error', '')}. "
                                      f"Fix: {rerun_hint(nb, profile, root)}")
        commit = entry.get("git_commit") or manifest.get("git_commit")
        changed = changed_since(commit, nb) if commit else None
        if changed is None:
            notes.append(f"{nb}: no git history to compare its commit {str(commit)[:12]} with")
        elif changed:
            raise StaleResultsError(
                f"{root / nb} was produced at commit {commit[:12]}, and {len(changed)} file(s) changed since "
                f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}). Fix: {rerun_hint(nb, profile, root)}")
    return notes


def read(results_root: str | Path, notebook: str, name: str) -> pd.DataFrame:
    """One table of one notebook (``name`` with its ``.csv``)."""
    return pd.read_csv(Path(results_root) / notebook / name)


def read_scores(results_root: str | Path, notebooks: Sequence[str]) -> pd.DataFrame:
    """The canonical long tables of ``notebooks`` stacked (they share one schema)."""
    return pd.concat([read(results_root, nb, "scores.csv") for nb in notebooks], ignore_index=True)


def main_comparison(scores: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Every ``step == "main"`` row (of ``models`` only, when given), one row per notebook, model, method, shots,
    detector and OOD set: the mean over seeds of AUROC, FPR95 and ID accuracy, the mean of the per-seed bootstrap
    CI bounds, the seed std of AUROC and the number of seeds; then one ``average`` row per group (no CI)."""
    t = scores[scores["step"] == "main"]
    if models is not None:
        t = t[t["model"].isin(models) | t["model"].str.split("+").str[0].isin(models)]
    t = t.astype({"shots": str})
    g = t.groupby(KEYS, sort=False)
    out = g[METRICS].mean()
    out["auroc_seed_std"] = g["auroc"].std(ddof=1).fillna(0.0)
    out["seeds"] = g["seed"].nunique()
    out["n_id"] = g["n_id"].first()
    out = out.reset_index()
    avg = out.groupby(KEYS[:-1], sort=False).agg(
        auroc=("auroc", "mean"), fpr95=("fpr95", "mean"), id_acc=("id_acc", "first"),
        seeds=("seeds", "first"), n_id=("n_id", "first")).reset_index().assign(ood_set="average")
    both = pd.concat([out, avg], ignore_index=True)
    order = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, out[KEYS[:-1]].to_numpy())))}
    both["_g"] = [order[tuple(r)] for r in both[KEYS[:-1]].to_numpy()]
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
    from .tables import wide

    out = wide(summary.assign(row=row_label(summary)), metric, index="row", ci=ci, decimals=decimals)
    return out[[c for c in out.columns if c != "average"] + ["average"]]


def comparison_wide(summary: pd.DataFrame, metric: str = "auroc", decimals: int = 1) -> pd.DataFrame:
    """``value [lo, hi]`` per OOD set and the average (no CI), one row per :func:`row_label`, and the ID accuracy."""
    acc = summary.assign(row=row_label(summary)).groupby("row", sort=False)["id_acc"].first().round(decimals)
    return by_row(summary, metric, ci=True, decimals=decimals).assign(**{"ID acc": acc}).reset_index()


def family_pairings(fits: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Notebook 03's pairings ``"<A> acc vs <B>"`` -> the columns ``("acc: <A>", "AUROC: <B>")`` of its
    family table."""
    out = {}
    for p in fits["pairing"]:
        a, b = p.split(" acc vs ", 1)
        out[p] = (f"acc: {a}", f"AUROC: {b}")
    return out
