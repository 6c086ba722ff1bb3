"""Execute the numbered notebooks with papermill: ``python -m helpers.run --profile teaching [--only 01 02]``.

Each notebook ``notebooks/NN_topic.ipynb`` runs with the profile's parameters (:mod:`helpers.profiles`) injected
into its cell tagged ``parameters``, then the ``--set KEY=VALUE`` overrides (repeatable; VALUE is read as YAML,
so ``--set ood_datasets='["/data/a", "/data/b"]' --set n_boot=50 --set on_error=skip`` give a list, an int and a
string). A key must be a variable assigned in the parameters cell of at least one selected notebook, and is
injected only into the notebooks that define it; the manifest records each notebook's overrides. Before anything
runs, each value is checked against the type of the parameter's literal default (and of the values the profiles
give it; an int passes for a float, a ``None`` default takes anything, a default that is not a literal is not
checked); a string given for a list becomes a one-element list, with a note.

Where a run writes (its *output folder* is the ``<results>`` it publishes to):

- no ``--set``, no ``--out``: tables to ``results/NN_topic/`` and figures to ``figures/NN_topic/`` (committed;
  teaching profile) or ``build/<profile>/results|figures`` (other profiles); executed notebooks to
  ``build/<profile>/NN_topic.ipynb``, the ones the course site renders (:mod:`helpers.site`);
- ``--out DIR``: ``DIR/results``, ``DIR/figures`` and the executed notebooks in ``DIR/notebooks``;
- ``--set`` without ``--out``: the same layout under ``build/<profile>/custom/``; neither kind touches the
  committed outputs nor the site's notebooks.

One run at a time per output folder: a run holds ``<results>/.run.lock`` (``fcntl.flock``, released by the
system when the run dies; the next run notes the takeover). A second run to the same folder stops at once with
``error:`` naming the running one's pid and command (exit status 3), or waits for it with ``--wait``. Each run
stages into its own ``.staging/run-<pid>-*`` folder beside its outputs; only when a notebook succeeds do its
tables and figures replace that notebook's previous ``NN_topic`` folders and its executed copy the previous one.
A failed notebook leaves them untouched; its executed copy and partial outputs are kept in
``<notebooks>/failed/NN_topic/`` (replaced by its next failure, removed by its next success).

``<results>/manifest.json`` records the profile, the git commit and whether ``helpers/`` or ``notebooks/`` had
uncommitted changes when the run started (``git_dirty``), models, dataset checksums and, per notebook, status,
seconds, overrides, the commit it ran at and what it reported (``events``: skipped files, rebuilt caches,
warnings; :mod:`helpers.events`). A run merges its entries into the existing manifest: other notebooks' entries
stay, and a failure is recorded as ``last_failure`` beside the notebook's last good entry rather than replacing
it. The manifest is rewritten after every notebook, and a notebook with a parameter ``results_root`` (08, which
only reads the others' tables) receives ``<results>`` there. Progress: one line per executed code cell (``cell
7/31 done in 1.2 s (12.3 s elapsed)``, numbered as the code cells of the executed notebook, the injected
parameters cell included) and, at most every 30 s, the notebook's latest text progress bar; after each notebook
its skipped files, rebuilt caches and warnings, and all of them again at the end. Errors are one line starting
with ``error:``; the exit status is 2 for a usage error, 3 when the output folder is busy and 1 for a failed
notebook (the run stops there unless ``--keep-going``). Kernels talk to the runner over local IPC sockets.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import events
from .errors import ClipOODError, UsageError, clause
from .io import LockBusy, file_lock, write_json
from .paths import REPO_ROOT, data_dir
from .profiles import COMMON, parameters
from .report import PROVENANCE, portable_text

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RUNNER_KEYS = ("results_dir", "figures_dir")  # set by the runner, never by --set
STAGING = ".staging"
LOCK = ".run.lock"
TQDM_INTERVAL_S = 30.0
NOT_LITERAL = object()  # a parameter default that ast.literal_eval cannot read: its type is not checked


class OutputBusyError(ClipOODError, RuntimeError):
    """Another run is writing to the same output folder."""


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


def _parameters_cell(nb_path: Path) -> ast.Module | None:
    """The parsed cell tagged ``parameters`` of a notebook; None when it has none."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return None
    try:
        return ast.parse(cells[0].source)
    except SyntaxError as e:
        raise UsageError(f"the parameters cell of {nb_path.name} is not plain Python ({clause(e)})") from e


def parameter_names(nb_path: Path) -> list[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (in order)."""
    tree = _parameters_cell(nb_path)
    names: list[str] = []

    def add(target):
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                add(t)

    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                add(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
    return names


def parameter_defaults(nb_path: Path) -> dict:
    """``{name: default}`` for each plain ``name = <literal>`` of the parameters cell (the last one wins); a value
    that is not a literal (an expression, another name) is :data:`NOT_LITERAL`."""
    tree = _parameters_cell(nb_path)
    out: dict = {}
    for node in tree.body if tree else []:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        value = getattr(node, "value", None)
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or value is None:
            continue
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    out[t.id] = NOT_LITERAL
    return out


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


KIND_WORDS = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number", "str": "a string",
              "list": "a list", "dict": "a mapping", "null": "null"}


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__  # bool before int: type() tells them apart


def _as_arg(value) -> str:
    """``value`` written as a ``--set`` VALUE a shell passes unchanged."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return shlex.quote(text)


def accepted_kinds(stem: str, key: str, default) -> set[str] | None:
    """The kinds of value a notebook's parameter takes: its default's and those every profile gives it (an int
    passes for a float); None (anything) for a ``None`` default or one that is not a literal."""
    if default is NOT_LITERAL or default is None:
        return None
    given = [parameters(p, stem[:2]) for p in COMMON]
    kinds = {_kind(default)} | {_kind(g[key]) for g in given if key in g}
    return kinds | {"int"} if "float" in kinds else kinds


def _typed(stem: str, key: str, value, default, notes: dict) -> object:
    """``value`` if the parameter takes it; a string for a list becomes a one-element list (with a note)."""
    kinds = accepted_kinds(stem, key, default)
    if kinds is None or _kind(value) in kinds:
        return value
    if isinstance(value, str) and "list" in kinds:
        notes[key] = (f"--set {key}={_as_arg(value)} is read as the one-element list {json.dumps([value])}; "
                      f"several values: --set {key}='{json.dumps([value, '...'])}'")
        return [value]
    shown = sorted(kinds - {"int"} if "float" in kinds else kinds)
    expected = " or ".join(KIND_WORDS.get(k, k) for k in shown)
    got = KIND_WORDS.get(_kind(value), _kind(value))
    raise UsageError(f"--set {key}={_as_arg(value) if value is not None else ''}: notebook {stem} expects "
                     f"{expected} for {key} (its default is {json.dumps(default)}), not {got} "
                     f"({json.dumps(value, default=str)}). Fix: e.g. --set {key}={_as_arg(default)}")


def typed_overrides(overrides: dict, defaults: dict[str, dict], names: dict[str, list[str]]) -> dict[str, dict]:
    """Each notebook's own overrides (the keys it defines), checked against its parameters' defaults; prints a
    note for each string read as a one-element list."""
    per_notebook, notes = {}, {}
    for stem, ns in names.items():
        per_notebook[stem] = {k: _typed(stem, k, v, defaults[stem].get(k, NOT_LITERAL), notes)
                              for k, v in overrides.items() if k in ns}
    for note in notes.values():
        print(f"[run] note: {note}", flush=True)
    return per_notebook


# ---------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Outputs:
    """Where a run writes: tables, figures, executed notebooks, and the parent of its private staging folder."""

    results: Path
    figures: Path
    notebooks: Path
    staging: Path


def run_outputs(profile: str, out: str | None, custom: bool = False) -> Outputs:
    """The folders of a run (module docstring); ``custom`` (overrides given) keeps away from the default ones."""
    build = REPO_ROOT / "build" / profile
    if out or custom:
        root = Path(out).expanduser().resolve() if out else build / "custom"
        return Outputs(root / "results", root / "figures", root / "notebooks", root / STAGING)
    if profile == "teaching":
        return Outputs(REPO_ROOT / "results", REPO_ROOT / "figures", build, build / STAGING)
    return Outputs(build / "results", build / "figures", build, build / STAGING)


def output_dirs(profile: str, out: str | None, custom: bool = False) -> tuple[Path, Path, Path]:
    """(build, results, figures) folders of a run (see :func:`run_outputs`)."""
    o = run_outputs(profile, out, custom)
    return REPO_ROOT / "build" / profile, o.results, o.figures


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(text: str) -> dict:
    """What a lock file's text says about the run that holds (or held) it."""
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return {}


def _describe_holder(h: dict) -> str:
    return (f"pid {h.get('pid', '?')}: {h.get('command', 'an unknown command')}, started "
            f"{h.get('started', 'at an unknown time')}")


@contextmanager
def output_lock(folder: Path, command: str, wait: bool = False):
    """Hold ``folder/.run.lock`` for the block (:func:`helpers.io.file_lock`): one run per output folder. A lock
    left by a run that died (the system releases it with the process) is taken over with a note."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = json.dumps({"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def waiting(text: str) -> None:
        print(f"[run] waiting for the run writing to {folder} ({_describe_holder(_holder(text))})", flush=True)

    try:
        with file_lock(path, me, wait=wait, waiting=waiting, remove=True) as left:
            if left:
                print(f"[run] note: took over the lock of {folder} left by a run that ended without releasing it "
                      f"({_describe_holder(_holder(left))})", flush=True)
            yield path
    except LockBusy as e:
        raise OutputBusyError(
            f"another run is writing to {folder} ({_describe_holder(_holder(e.holder))}); wait for it to end, pass "
            f"--wait to wait for it, or write elsewhere with --out DIR") from None


def _new_stage(staging: Path) -> Path:
    """A staging folder private to this run; those left by runs whose process is gone are removed first."""
    staging.mkdir(parents=True, exist_ok=True)
    for old in staging.iterdir():
        m = re.fullmatch(r"run-(\d+)-\w+", old.name)
        if old.is_dir() and (m is None or not _pid_alive(int(m.group(1)))):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=staging))


# ---------------------------------------------------------------------------------------------- provenance


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


def _kernel_manager_class(env: dict, ipc_path: Path) -> type:
    """A kernel manager that starts the kernel with ``env`` added to ours, over IPC sockets at ``ipc_path``-N: no
    TCP port is opened (so the kernel has no unencrypted-TCP warning to print) and concurrent runs do not meet."""
    from jupyter_client.manager import AsyncKernelManager

    class RunKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(transport="ipc", ip=str(ipc_path), **kw)

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**kw.get("env", os.environ), **env}
            return await super()._async_pre_start_kernel(**kw)

    return RunKernelManager


# ---------------------------------------------------------------------------------------------- execution


def _publish(staged: Path, final: Path) -> None:
    """Replace ``final`` by ``staged`` (moved); the previous ``final`` survives any failure of the move."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.parent / f".old-{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    if staged.exists() and (staged.is_file() or any(staged.iterdir())):
        try:
            shutil.move(str(staged), str(final))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            if old.exists():
                old.rename(final)
            raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _execute(nb: Path, executed: Path, params: dict, kernel: str, env: dict) -> dict:
    """Run ``nb`` into ``executed``; ``{}`` on success, else the failure's fields for the manifest entry (``cell``:
    the failed code cell's number out of ``cells``, as in the progress lines)."""
    import papermill as pm

    stem, failed_cell = nb.stem, []

    def cell_progress(k: int, n: int, failed: bool, cell_s: float, total_s: float) -> None:
        if failed:
            failed_cell.append((k, n))
        print(f"[run] {stem}: cell {k}/{n} {'failed' if failed else 'done'} in {cell_s:.1f} s "
              f"({total_s:.1f} s elapsed)", flush=True)

    ipc = Path(tempfile.mkdtemp(prefix="clipood-kernel-"))  # short: a socket path has at most ~100 characters
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                            progress_bar=False, log_output=False, engine_name=_engine_name(),
                            cell_progress=cell_progress, stderr_file=_TqdmEcho(stem),
                            kernel_manager_class=_kernel_manager_class(env, ipc / "kernel"))
    except pm.PapermillExecutionError as e:
        k, n = failed_cell[0] if failed_cell else (None, None)
        return {"status": "failed", "cell": k, "cells": n, "execution_count": e.exec_count,
                "error": f"{e.ename}: {e.evalue}"}
    except Exception as e:  # the kernel died, timed out or could not start
        return {"status": "failed", "cell": None, "cells": None, "execution_count": None,
                "error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(ipc, ignore_errors=True)
    return {}


def run_notebook(nb: Path, profile: str, out: Outputs, stage_root: Path, kernel: str,
                 overrides: dict | None = None) -> dict:
    """Execute one notebook into ``stage_root/NN_topic/``; publish its tables, figures and executed copy only if
    it succeeds, else keep them in ``<notebooks>/failed/NN_topic/``. Returns its manifest entry."""
    stem = nb.stem
    stage = stage_root / stem
    (stage / "results").mkdir(parents=True)
    (stage / "figures").mkdir()
    own = dict(overrides or {})
    params = {**parameters(profile, stem[:2]), **own,
              "results_dir": str(stage / "results"), "figures_dir": str(stage / "figures")}
    if "results_root" in parameter_names(nb):  # notebook 08 reads the other notebooks' published tables
        params["results_root"] = str(out.results)
    events_file = stage_root / f"{stem}.events.jsonl"
    t0 = time.time()
    entry: dict = {"status": "ok", "profile": profile, "overrides": own, "git_commit": git_commit(),
                   "git_dirty": git_dirty()}
    entry.update(_execute(nb, stage / nb.name, params, kernel, {events.ENV: str(events_file)}))
    entry["seconds"] = round(time.time() - t0, 1)
    if summary := events.summarize(events.read(events_file)):
        entry["events"] = summary
    prov = stage / "results" / PROVENANCE
    if prov.is_file():
        entry["provenance"] = json.loads(prov.read_text())
        prov.unlink()
    kept = out.notebooks / "failed" / stem
    if entry["status"] == "ok":
        _publish(stage / "results", out.results / stem)
        _publish(stage / "figures", out.figures / stem)
        _publish(stage / nb.name, out.notebooks / nb.name)
        shutil.rmtree(kept, ignore_errors=True)
    else:
        _publish(stage, kept)
        entry.update(partial_outputs=str(kept), executed_notebook=str(kept / nb.name))
    return entry


def record_entry(manifest: dict, stem: str, entry: dict) -> None:
    """Put a notebook's entry into the manifest; a failure after a success is kept beside the good entry (as
    ``last_failure``), so that the tables it describes stay usable (notebook 08 checks them by this entry)."""
    old = manifest["notebooks"].get(stem)
    if entry["status"] != "ok" and old and old.get("status") == "ok":
        old["last_failure"] = {**entry, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    else:
        manifest["notebooks"][stem] = entry


def rerun_command(args: argparse.Namespace, nb: Path) -> str:
    """The runner command that runs notebook ``nb`` again with this run's options."""
    words = ["python -m helpers.run"]
    if args.profile != "teaching":
        words += ["--profile", args.profile]
    if args.out:
        words += ["--out", shlex.quote(str(Path(args.out).expanduser().resolve()))]
    words += ["--only", nb.name[:2]]
    words += [f"--set {shlex.quote(s)}" for s in args.overrides or []]
    return " ".join(words)


def failure_message(nb: Path, entry: dict, out: Outputs, args: argparse.Namespace) -> str:
    """One line: where it failed (the cell numbered as in the progress lines, and its In [] number in the
    executed notebook kept), why, what was kept, and the command to run it again."""
    if entry.get("cell") is not None:
        count = entry.get("execution_count")
        where = (f"in cell {entry['cell']}/{entry['cells']} (In [{count if count is not None else ' '}] of the "
                 f"executed notebook {entry['executed_notebook']})")
    else:
        where = f"before or outside a cell (executed notebook: {entry['executed_notebook']})"
    return (f"notebook {nb.name} failed {where}: {clause(entry['error'])}. Its partial tables and figures are in "
            f"{entry['partial_outputs']}; the previous {out.results / nb.stem} is untouched. Fix the cause, then "
            f"run it again alone: {rerun_command(args, nb)}" + ("" if args.keep_going else
                                                                 " (--keep-going runs the others after a failure)"))


def _print_events(label: str, summary: dict) -> None:
    for line in events.describe(summary):
        print(f"[run] {label}: {line}", flush=True)


def _load_manifest(path: Path) -> dict:
    """The output folder's manifest, to merge this run's entries into; a damaged one is replaced (with a note)."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("notebooks", {}), dict):
            return manifest
    except ValueError:
        pass
    print(f"[run] note: {path} is not a runner manifest; writing a new one", flush=True)
    return {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{message} (see python -m helpers.run --help)")


def _parser() -> _Parser:
    p = _Parser(prog="python -m helpers.run", description=__doc__.split("\n")[0],
                epilog="Example: python -m helpers.run --profile teaching --only 02 "
                       "--set id_dataset=/data/mine/test --set ood_datasets='[\"/data/ood1\", \"/data/ood2\"]' "
                       "--set on_error=skip")
    p.add_argument("--profile", default="teaching", choices=list(COMMON))
    p.add_argument("--only", nargs="*", help="two-digit notebook numbers, e.g. 01 03")
    p.add_argument("--out", help="write results/, figures/ and the executed notebooks/ under this folder instead")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    p.add_argument("--wait", action="store_true", help="wait for another run writing to the same folder to end")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter after the profile's; VALUE is YAML (repeatable)")
    return p


def _run_all(args: argparse.Namespace, selected: list[Path], own: dict[str, dict], out: Outputs) -> int:
    """Run the selected notebooks (the output folder is locked), merging their entries into the manifest."""
    kernel = kernel_name()
    manifest_path = out.results / "manifest.json"
    manifest = _load_manifest(manifest_path)
    manifest.update({"profile": args.profile, "git_commit": git_commit(), "git_dirty": git_dirty(),
                     "kernel": kernel, "datasets": dataset_checksums()})
    manifest.setdefault("notebooks", {})
    models = manifest.setdefault("models", {})
    failed, summaries, stage_root = False, [], _new_stage(out.staging)
    try:
        for nb in selected:
            print(f"[run] {nb.name} ({args.profile})", flush=True)
            entry = run_notebook(nb, args.profile, out, stage_root, kernel, own[nb.stem])
            models.update(entry.get("provenance", {}).get("models", {}))
            record_entry(manifest, nb.stem, portable_text(entry))  # the manifest names no machine's folders
            manifest["total_seconds"] = round(sum(e.get("seconds", 0) for e in manifest["notebooks"].values()), 1)
            write_json(manifest_path, manifest)  # after every notebook: a later one (08) reads the entries
            print(f"[run] {nb.name}: {entry['status']} in {entry['seconds']} s", flush=True)
            _print_events(nb.stem, entry.get("events", {}))
            summaries.append(entry.get("events", {}))
            if entry["status"] != "ok":
                failed = True
                print(f"error: {' '.join(failure_message(nb, entry, out, args).splitlines())}", file=sys.stderr,
                      flush=True)
                if not args.keep_going:
                    break
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    if len(selected) > 1 and (combined := events.merge(summaries)):
        _print_events("all notebooks", combined)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
        overrides = parse_overrides(args.overrides)
        selected = notebooks(args.only)
        if not selected:
            raise UsageError(f"no notebooks in {NOTEBOOK_DIR}")
        names = {nb.stem: parameter_names(nb) for nb in selected}
        check_overrides(overrides, names)
        own = typed_overrides(overrides, {nb.stem: parameter_defaults(nb) for nb in selected}, names)
    except UsageError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    if args.profile != "paper":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = run_outputs(args.profile, args.out, custom=bool(overrides))
    if overrides:
        print(f"[run] overrides {json.dumps(overrides)}; tables -> {out.results}", flush=True)
    command = " ".join(["python -m helpers.run", *map(shlex.quote, argv)])
    try:
        with output_lock(out.results, command, wait=args.wait):
            return _run_all(args, selected, own, out)
    except OutputBusyError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
