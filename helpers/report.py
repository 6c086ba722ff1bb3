"""Tables, figures and provenance, written where the runner expects them.

A notebook receives ``results_dir`` and ``figures_dir`` from the runner (parameters cell) and saves with
:func:`save_table` (CSV + Markdown) and :func:`save_figure` (PNG). :func:`record_provenance` notes which
models and datasets a notebook used; the runner folds these notes into ``results/manifest.json``.
Tables are rounded to a fixed number of decimals so that two runs of the same profile give identical files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .io import atomic_path, write_json
from .paths import REPO_ROOT, cache_dir, data_dir

PROVENANCE = "_provenance.json"


def set_style() -> None:
    """The series' figure style (seaborn's whitegrid, readable sizes)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
                         "svg.hashsalt": "clip-ood", "figure.max_open_warning": 50})


def save_table(df: pd.DataFrame, name: str, results_dir: str | Path, decimals: int = 2,
               index: bool = False, latex: bool = False) -> Path:
    """Write ``df`` to ``<results_dir>/<name>.csv`` and ``.md`` (rounded to ``decimals``), with ``latex`` also a
    booktabs ``.tex`` table; return the CSV path."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounded = df.round(decimals)
    csv = out / f"{name}.csv"
    with atomic_path(csv) as tmp:
        rounded.to_csv(tmp, index=index, float_format=f"%.{decimals}f")
    with atomic_path(out / f"{name}.md") as tmp:
        # per column: tabulate turns a row of ints and floats into floats, so integer columns ask for no decimals
        cols = ([rounded.index] if index else []) + [rounded[c] for c in rounded.columns]
        fmt = [".0f" if pd.api.types.is_integer_dtype(c) else f".{decimals}f" for c in cols]
        tmp.write_text(rounded.to_markdown(index=index, floatfmt=fmt) + "\n")
    if latex:  # pandas writes \toprule / \midrule / \bottomrule: needs \usepackage{booktabs}
        with atomic_path(out / f"{name}.tex") as tmp:
            tmp.write_text(rounded.to_latex(index=index, float_format=f"%.{decimals}f", escape=True))
    return csv


# metadata that would differ between runs (time stamps, library versions) is left out of every format
_NO_STAMP = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def save_figure(fig, name: str, figures_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> Path:
    """Write ``fig`` to ``<figures_dir>/<name>.<format>`` for each of ``formats`` (png, pdf), without time stamps,
    so that reruns give the same files; return the first path."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in formats:
        paths.append(out / f"{name}.{f}")
        with atomic_path(paths[-1], f".{f}") as tmp:
            fig.savefig(tmp, format=f, metadata=_NO_STAMP.get(f))
    return paths[0]


def _portable(location: str | Path) -> str:
    """A path as the manifest stores it, the same on any machine: under the cache root as ``$CACHE/...``, under the
    data root as ``$DATA/...`` (the folders :func:`helpers.paths.cache_dir` / :func:`helpers.paths.data_dir` name,
    moved with ``CLIPOOD_CACHE`` / ``CLIPOOD_DATA``), else inside the repository as a repository-relative path.
    The most specific root wins; any other absolute path, and a pretrained tag such as ``"openai"``, stay as given."""
    if not Path(location).is_absolute():
        return str(location)  # a pretrained tag such as "openai"
    path = Path(location).resolve()
    roots = [("$CACHE/", cache_dir()), ("$DATA/", data_dir()), ("", REPO_ROOT)]
    for prefix, root in sorted(roots, key=lambda r: -len(r[1].resolve().parts)):
        if path.is_relative_to(root.resolve()):
            return (prefix + path.relative_to(root.resolve()).as_posix()).removesuffix("/.")
    return str(location)


def portable_text(obj):
    """``obj`` (a string, or lists / dicts of them) with every absolute path under the cache, data or repository
    root written as :func:`_portable` writes it (``$CACHE/...``, ``$DATA/...``, repository-relative): messages the
    manifest keeps (warnings, errors) then name no folder of the machine that ran them."""
    if isinstance(obj, dict):
        return {k: portable_text(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_text(v) for v in obj]
    if not isinstance(obj, str):
        return obj
    roots = [("$CACHE", cache_dir()), ("$DATA", data_dir()), ("", REPO_ROOT)]
    for prefix, root in sorted(roots, key=lambda r: -len(str(r[1].resolve()))):
        for form in {str(root.resolve()), str(root)}:
            obj = re.sub(re.escape(form) + r"(/|\b)", lambda m, p=prefix: (p + "/") if p else "", obj)
    return obj


def record_provenance(results_dir: str | Path, *, models=(), datasets=(), extra: dict | None = None) -> None:
    """Merge model ids / checkpoint hashes and dataset fingerprints into ``<results_dir>/_provenance.json``.
    Checkpoint files and dataset roots are recorded machine-independently (:func:`_portable`)."""
    path = Path(results_dir) / PROVENANCE
    prov = json.loads(path.read_text()) if path.is_file() else {"models": {}, "datasets": {}}
    for m in models:
        prov["models"][m.model_id] = {"arch": m.arch, "pretrained": _portable(m.pretrained) if m.pretrained else m.pretrained,
                                      "checkpoint_sha256": m.checkpoint_sha256,
                                      "zero_shot_accuracy": m.info.get("zero_shot_accuracy")}
    for ds in datasets:
        prov["datasets"][ds.name] = {"root": _portable(ds.root), "images": len(ds), "file_list_sha256": ds.fingerprint()}
    if extra:
        prov.setdefault("extra", {}).update(extra)
    write_json(path, prov)
