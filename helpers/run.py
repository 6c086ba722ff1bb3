"""Execute the numbered notebooks with papermill: ``python -m helpers.run --profile teaching [--only 01 02]``.

Each notebook ``notebooks/NN_topic.ipynb`` runs with the profile's parameters (:mod:`helpers.profiles`) injected
into its cell tagged ``parameters``, then the ``--set KEY=VALUE`` overrides (repeatable; VALUE is read as YAML,
so ``--set ood_datasets='["/data/a", "/data/b"]' --set n_boot=50 --set on_error=skip`` give a list, an int and a
string). A key must be a variable assigned in the parameters cell of at least one selected notebook, and is
injected only into the notebooks that define it; the manifest records each notebook's overrides.

Executed copies go to ``build/<profile>/``; tables to ``<results>/NN_topic/`` and figures to
``<figures>/NN_topic/``, where ``<results>``/``<figures>`` are the repository's ``results/``/``figures/`` for
the teaching profile without overrides (committed) and ``build/<profile>/results|figures`` otherwise (``--out``
overrides both). A notebook writes into ``build/<profile>/.staging/NN_topic/`` first; only when it succeeds do
its tables and figures replace the previous ``NN_topic`` folders, so a failed notebook leaves them untouched.

``<results>/manifest.json`` records the profile, the git commit and whether ``helpers/`` or ``notebooks/`` had
uncommitted changes when the run started (``git_dirty``), models, dataset checksums and, per notebook, status,
seconds, overrides and the commit it ran at; it is rewritten after every notebook, and a notebook with a parameter
``results_root`` (08, which only reads the others' tables) receives ``<results>`` there. Progress: one line per executed cell (``cell 7/31 done in 1.2 s (12.3 s elapsed)``) and,
at most every 30 s, the notebook's latest text progress bar. Errors are one line starting with ``error:``;
the exit status is 2 for a usage error and 1 for a failed notebook (the run stops there unless ``--keep-going``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import UsageError, clause
from .io import write_json
from .paths import REPO_ROOT, data_dir
from .profiles import COMMON, parameters
from .report import PROVENANCE

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RUNNER_KEYS = ("results_dir", "figures_dir")  # set by the runner, never by --set
STAGING = ".staging"
TQDM_INTERVAL_S = 30.0


# ---------------------------------------------------------------------------------------------- notebooks


def all_notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks to run, in order; ``only`` (two-digit numbers) must name existing ones."""
    found = all_notebooks()
    if not only:
        return found
    available = [p.name[:2] for p in found]
    wanted = [str(o).zfill(2) for o in only]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise UsageError(f"no notebook {', '.join(missing)} in {NOTEBOOK_DIR}; available: "
                         f"{' '.join(available) if available else 'none'}")
    return [p for p in found if p.name[:2] in set(wanted)]


def parameter_names(nb_path: Path) -> list[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (in order)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return []
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise UsageError(f"the parameters cell of {nb_path.name} is not plain Python ({clause(e)})") from e
    names: list[str] = []

    def add(target):
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                add(t)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                add(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
    return names


# ---------------------------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str] | None) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{KEY: yaml(VALUE)}`` (later items win)."""
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--set takes KEY=VALUE with KEY a parameter name, not {item!r}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            first = " ".join(str(e).split())
            raise UsageError(f"--set {key}: {value!r} is not valid YAML ({first}); quote lists as "
                             f"'[\"a\", \"b\"]'") from e
    return out


def check_overrides(overrides: dict, names: dict[str, list[str]]) -> None:
    """Every key must be a parameter of at least one selected notebook (``names``: stem -> parameter names)."""
    known = sorted({n for ns in names.values() for n in ns} - set(RUNNER_KEYS))
    reserved = [k for k in overrides if k in RUNNER_KEYS]
    if reserved:
        raise UsageError(f"{', '.join(reserved)} is set by the runner; use --out DIR to choose where tables and "
                         f"figures go")
    unknown = [k for k in overrides if k not in known]
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise UsageError(f"unknown parameter {said} for notebook(s) {' '.join(sorted(names))}; known: "
                         f"{' '.join(known)}")


# ---------------------------------------------------------------------------------------------- provenance


def output_dirs(profile: str, out: str | None, custom: bool = False) -> tuple[Path, Path, Path]:
    """(build, results, figures) folders for a run; ``custom`` (overrides given) keeps the committed ones."""
    build = REPO_ROOT / "build" / profile
    if out:
        root = Path(out).expanduser().resolve()
        return build, root / "results", root / "figures"
    if profile == "teaching" and not custom:
        return build, REPO_ROOT / "results", REPO_ROOT / "figures"
    return build, build / "results", build / "figures"


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit() -> str | None:
    r = _git("rev-parse", "HEAD")
    return r.stdout.strip() if r else None


def git_dirty() -> bool | None:
    """Whether ``helpers/`` or ``notebooks/`` have uncommitted changes (untracked files included); None
    without git."""
    r = _git("status", "--porcelain", "--untracked-files=normal", "--", "helpers", "notebooks")
    return bool(r.stdout.strip()) if r else None


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


# ---------------------------------------------------------------------------------------------- progress


class _TqdmEcho:
    """A file for the kernel's stderr that prints the latest text progress bar at most every ``interval`` s."""

    BAR = re.compile(r"\d+%\||\d+it \[|it/s\]|s/it\]")

    def __init__(self, label: str, interval: float = TQDM_INTERVAL_S):
        self.label, self.interval, self.last = label, interval, float("-inf")

    def write(self, text: str) -> None:
        bars = [s.strip() for s in re.split(r"[\r\n]", text) if self.BAR.search(s)]
        now = time.monotonic()
        if bars and now - self.last >= self.interval:
            self.last = now
            print(f"[run] {self.label}: {bars[-1]}", flush=True)

    def flush(self) -> None:
        pass


def _engine_name() -> str:
    """Register (once) a papermill engine that reports each finished code cell."""
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.exceptions import PapermillException

    name = "clip-ood-progress"
    try:
        papermill_engines.get_engine(name)
        return name
    except PapermillException:  # not registered yet
        pass

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, cell_progress=None, **kwargs):
            if cell_progress is not None:
                code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
                number = {i: k + 1 for k, i in enumerate(code)}
                complete, started, t0 = nb_man.cell_complete, {}, time.monotonic()
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    started[cell_index] = time.monotonic()
                    return start(cell, cell_index=cell_index, **kw)

                def cell_complete(cell, cell_index=None, **kw):
                    out = complete(cell, cell_index=cell_index, **kw)
                    if cell_index in number:
                        now = time.monotonic()
                        failed = bool(cell.metadata.get("papermill", {}).get("exception"))
                        cell_progress(number[cell_index], len(code), failed, now - started.get(cell_index, now),
                                      now - t0)
                    return out

                nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(name, ProgressEngine)
    return name


# ---------------------------------------------------------------------------------------------- execution


def _publish(staged: Path, final: Path) -> None:
    """Replace ``final`` by ``staged`` (moved); the previous ``final`` survives any failure of the move."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.parent / f".old-{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    if staged.is_dir() and any(staged.iterdir()):
        try:
            shutil.move(str(staged), str(final))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            if old.exists():
                old.rename(final)
            raise
    shutil.rmtree(old, ignore_errors=True)


def run_notebook(nb: Path, profile: str, build: Path, results: Path, figures: Path, kernel: str,
                 overrides: dict | None = None) -> dict:
    """Execute one notebook into a staging folder; publish its tables and figures only if it succeeds."""
    import papermill as pm

    stem = nb.stem
    stage = build / STAGING / stem
    shutil.rmtree(stage, ignore_errors=True)
    stage_results, stage_figures = stage / "results", stage / "figures"
    stage_results.mkdir(parents=True)
    stage_figures.mkdir(parents=True)
    own = dict(overrides or {})
    params = {**parameters(profile, stem[:2]), **own,
              "results_dir": str(stage_results), "figures_dir": str(stage_figures)}
    if "results_root" in parameter_names(nb):  # notebook 08 reads the other notebooks' published tables
        params["results_root"] = str(results)

    def cell_progress(k: int, n: int, failed: bool, cell_s: float, total_s: float) -> None:
        print(f"[run] {stem}: cell {k}/{n} {'failed' if failed else 'done'} in {cell_s:.1f} s "
              f"({total_s:.1f} s elapsed)", flush=True)

    t0 = time.time()
    entry: dict = {"status": "ok", "overrides": own, "git_commit": git_commit(), "git_dirty": git_dirty()}
    try:
        pm.execute_notebook(str(nb), str(build / nb.name), parameters=params, kernel_name=kernel,
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False,
                            engine_name=_engine_name(), cell_progress=cell_progress, stderr_file=_TqdmEcho(stem))
    except pm.PapermillExecutionError as e:
        entry.update(status="failed", cell=e.cell_index, execution_count=e.exec_count,
                     error=f"{e.ename}: {e.evalue}")
    except Exception as e:  # the kernel died, timed out or could not start
        entry.update(status="failed", cell=None, execution_count=None, error=f"{type(e).__name__}: {e}")
    entry["seconds"] = round(time.time() - t0, 1)
    prov = stage_results / PROVENANCE
    if prov.is_file():
        entry["provenance"] = json.loads(prov.read_text())
        prov.unlink()
    if entry["status"] == "ok":
        _publish(stage_results, results / stem)
        _publish(stage_figures, figures / stem)
        shutil.rmtree(stage, ignore_errors=True)
    else:
        entry["partial_outputs"] = str(stage)
    return entry


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{message} (see python -m helpers.run --help)")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m helpers.run", description=__doc__.split("\n")[0],
                epilog="Example: python -m helpers.run --profile teaching --only 02 "
                       "--set id_dataset=/data/mine/test --set ood_datasets='[\"/data/ood1\", \"/data/ood2\"]' "
                       "--set on_error=skip")
    p.add_argument("--profile", default="teaching", choices=list(COMMON))
    p.add_argument("--only", nargs="*", help="two-digit notebook numbers, e.g. 01 03")
    p.add_argument("--out", help="write results/ and figures/ under this folder instead")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter after the profile's; VALUE is YAML (repeatable)")
    try:
        args = p.parse_args(argv)
        overrides = parse_overrides(args.overrides)
        selected = notebooks(args.only)
        if not selected:
            raise UsageError(f"no notebooks in {NOTEBOOK_DIR}")
        names = {nb.stem: parameter_names(nb) for nb in selected}
        check_overrides(overrides, names)
    except UsageError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    if args.profile != "paper":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build, results, figures = output_dirs(args.profile, args.out, custom=bool(overrides))
    build.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    if overrides:
        print(f"[run] overrides {json.dumps(overrides)}; tables -> {results}", flush=True)
    kernel = kernel_name()
    manifest_path = results / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() and args.only else {}
    manifest.update({"profile": args.profile, "git_commit": git_commit(), "git_dirty": git_dirty(),
                     "kernel": kernel, "datasets": dataset_checksums()})
    manifest.setdefault("notebooks", {})
    models = manifest.setdefault("models", {})
    failed = None
    for nb in selected:
        own = {k: v for k, v in overrides.items() if k in names[nb.stem]}
        print(f"[run] {nb.name} ({args.profile})", flush=True)
        entry = run_notebook(nb, args.profile, build, results, figures, kernel, own)
        models.update(entry.get("provenance", {}).get("models", {}))
        manifest["notebooks"][nb.stem] = entry
        manifest["total_seconds"] = round(sum(e["seconds"] for e in manifest["notebooks"].values()), 1)
        write_json(manifest_path, manifest)  # after every notebook: a later one (08) reads the entries
        print(f"[run] {nb.name}: {entry['status']} in {entry['seconds']} s", flush=True)
        if entry["status"] != "ok":
            where = (f"in cell {entry['cell']} (execution count {entry['execution_count']})"
                     if entry.get("cell") is not None else "before or outside a cell")
            failed = (f"notebook {nb.name} failed {where}: {clause(entry['error'])}. Executed copy: "
                      f"{build / nb.name}; its partial outputs: {entry['partial_outputs']} (the previous "
                      f"{results / nb.stem} is untouched)")
            print(f"error: {' '.join(failed.splitlines())}", file=sys.stderr, flush=True)
            if not args.keep_going:
                break
    manifest["total_seconds"] = round(sum(e["seconds"] for e in manifest["notebooks"].values()), 1)
    write_json(manifest_path, manifest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
