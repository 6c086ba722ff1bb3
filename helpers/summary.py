"""The study's summary (notebook 08): read the tables notebooks 01–07 wrote, check they are current, combine them.

Notebook 08 never recomputes a score. It reads each notebook's canonical long table (``results/NN_*/scores.csv``)
and a few of its views, and refuses to go on when one is missing or was produced by code older than the checkout:

- *missing*: the table file does not exist, or ``results/manifest.json`` does not list the notebook as ``ok``;
- *stale*: the notebook's manifest entry names a commit, and ``helpers/`` or that notebook changed between that
  commit and ``HEAD`` (``git diff``). Without git, or for an entry that names no commit, nothing can be compared;
  a note says so.

Either error names the notebook and the command that regenerates it. The one aggregation,
:func:`helpers.views.main_comparison` (every ``step == "main"`` row of every notebook, mean over seeds, plus the
average over OOD sets), and its readable forms live in :mod:`helpers.views`; they are importable from here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .errors import ClipOODError
from .views import by_row, comparison_wide, main_comparison, row_label  # noqa: F401  (their home: helpers.views)

# notebook -> the tables notebook 08 reads from its results folder
NEEDS: dict[str, list[str]] = {
    "02_zero_shot": ["scores.csv"],
    "03_probes": ["scores.csv", "family_correlation.csv", "family_fit.csv"],
    "04_finetune": ["scores.csv"],
    "05_setar": ["scores.csv", "selected_ratios.csv"],
    "06_cma": ["scores.csv", "gap.csv"],
    "07_adversarial": ["auroc_drop.csv", "auroc.csv"],
}


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


def family_pairings(fits: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Notebook 03's pairings ``"<A> acc vs <B>"`` -> the columns ``("acc: <A>", "AUROC: <B>")`` of its
    family table."""
    out = {}
    for p in fits["pairing"]:
        a, b = p.split(" acc vs ", 1)
        out[p] = (f"acc: {a}", f"AUROC: {b}")
    return out
