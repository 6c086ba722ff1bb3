"""Execute the numbered notebooks with papermill: ``python -m helpers.run --profile teaching [--only 01 02]``.

Each notebook ``notebooks/NN_topic.ipynb`` runs with the profile's parameters injected into its cell tagged
``parameters``. Executed copies go to ``build/<profile>/``; tables to ``<results>/NN_topic/`` and figures to
``<figures>/NN_topic/``, where ``<results>``/``<figures>`` are the repository's ``results/``/``figures/`` for
the teaching profile (committed) and ``build/<profile>/results|figures`` otherwise (``--out`` overrides).
``<results>/manifest.json`` records the profile, git commit, models, dataset checksums and, per notebook,
status and seconds. A failing notebook stops the run (unless ``--keep-going``) with a non-zero exit status
and a message naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .io import write_json
from .paths import REPO_ROOT, data_dir
from .profiles import parameters
from .report import PROVENANCE

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebooks(only: list[str] | None = None) -> list[Path]:
    found = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in {o.zfill(2) for o in only}]
    return found


def output_dirs(profile: str, out: str | None) -> tuple[Path, Path, Path]:
    """(build, results, figures) folders for a run."""
    build = REPO_ROOT / "build" / profile
    if out:
        root = Path(out).resolve()
        return build, root / "results", root / "figures"
    if profile == "teaching":
        return build, REPO_ROOT / "results", REPO_ROOT / "figures"
    return build, build / "results", build / "figures"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dataset_checksums() -> dict:
    """Mirror archives and their sha256 for every prepared dataset folder."""
    out = {}
    for marker in sorted(data_dir().glob("*/.source.json")):
        info = json.loads(marker.read_text())
        out[marker.parent.name] = {"archive": info.get("archive"), "sha256": info.get("sha256")}
    return out


def kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    return "clip-ood" if "clip-ood" in find_kernel_specs() else "python3"


def run_notebook(nb: Path, profile: str, build: Path, results: Path, figures: Path, kernel: str) -> dict:
    import papermill as pm

    stem = nb.stem
    params = {**parameters(profile, stem[:2]), "results_dir": str(results / stem), "figures_dir": str(figures / stem)}
    (results / stem).mkdir(parents=True, exist_ok=True)
    prov = results / stem / PROVENANCE
    prov.unlink(missing_ok=True)
    t0 = time.time()
    entry: dict = {"status": "ok"}
    try:
        pm.execute_notebook(str(nb), str(build / nb.name), parameters=params, kernel_name=kernel,
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        entry = {"status": "failed", "cell": e.cell_index, "execution_count": e.exec_count,
                 "error": f"{e.ename}: {e.evalue}"}
    entry["seconds"] = round(time.time() - t0, 1)
    if prov.is_file():
        entry["provenance"] = json.loads(prov.read_text())
        prov.unlink()
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="teaching", choices=["smoke", "teaching", "paper"])
    p.add_argument("--only", nargs="*", help="two-digit notebook numbers, e.g. 01 03")
    p.add_argument("--out", help="write results/ and figures/ under this folder instead")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if args.profile != "paper" else None
    build, results, figures = output_dirs(args.profile, args.out)
    build.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    selected = notebooks(args.only)
    if not selected:
        print(f"no notebooks match {args.only} in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    kernel = kernel_name()
    manifest_path = results / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() and args.only else {}
    manifest.update({"profile": args.profile, "git_commit": git_commit(), "kernel": kernel,
                     "datasets": dataset_checksums()})
    manifest.setdefault("notebooks", {})
    models = manifest.setdefault("models", {})
    failed = None
    for nb in selected:
        print(f"[run] {nb.name} ({args.profile})", flush=True)
        entry = run_notebook(nb, args.profile, build, results, figures, kernel)
        models.update(entry.get("provenance", {}).get("models", {}))
        manifest["notebooks"][nb.stem] = entry
        print(f"[run] {nb.name}: {entry['status']} in {entry['seconds']} s", flush=True)
        if entry["status"] != "ok":
            failed = (f"notebook {nb.name} failed in cell {entry['cell']} (execution count "
                      f"{entry['execution_count']}): {entry['error']}. Executed copy: {build / nb.name}")
            print(f"[run] {failed}", file=sys.stderr, flush=True)
            if not args.keep_going:
                break
    manifest["total_seconds"] = round(sum(e["seconds"] for e in manifest["notebooks"].values()), 1)
    write_json(manifest_path, manifest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
