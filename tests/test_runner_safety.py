"""The runner's safety (issue 20): concurrent runs, kept records, console summary of events, typed --set values,
cell numbers in messages, merged manifests, a quiet kernel. Tiny throw-away notebooks, a few kernel starts."""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

import helpers.run as run
from helpers import events
from helpers.errors import UsageError
from helpers.run import main

TABLE_PARAMS = """value = 0
sleep_s = 0.0
fail = False
results_dir = "../results/x"
figures_dir = "../figures/x"
"""
TABLE_BODY = [
    "import pathlib, time",
    "pathlib.Path(results_dir, 'table.csv').write_text(f'value,{value}\\n')\n"
    "pathlib.Path(results_dir, '_provenance.json').write_text('{\"models\": {\"toy\": {\"v\": 1}}}')\n"
    "pathlib.Path(figures_dir, 'plot.png').write_bytes(f'png {value}'.encode())\n"
    "time.sleep(sleep_s)",
    "if fail:\n    raise ValueError(f'value {value} is broken on purpose.')",
]
EVENTS_PARAMS = """ood_datasets = ["dtd10"]
n_boot = 200
results_dir = "../results/x"
figures_dir = "../figures/x"
"""
EVENTS_BODY = [
    "import json, pathlib, warnings\nfrom helpers import events",
    "warnings.warn('first odd thing')\nwarnings.warn('second odd thing')\n"
    "warnings.warn('text-embedding cache /c/t.npy is damaged (bad); rebuilding it')\n"
    "events.record('skipped', dataset='toy', files=['/d/toy/cat/a.png', '/d/toy/dog/b.png'])\n"
    "pathlib.Path(results_dir, 'ood.json').write_text(json.dumps(ood_datasets))",
]
RUNNER = """import sys
from pathlib import Path
import helpers.run as run
root = Path(sys.argv[1])
run.NOTEBOOK_DIR, run.REPO_ROOT = root / "notebooks", root
sys.exit(run.main(sys.argv[2:]))
"""


def write_notebook(nbdir: Path, name: str, params: str, body: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {name}"),
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(src) for src in body],
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / name)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A clone stand-in with notebooks 01 and 02 (a table each), as tests/test_runner_options.py builds one."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    write_notebook(nbdir, "01_alpha.ipynb", TABLE_PARAMS, TABLE_BODY)
    write_notebook(nbdir, "02_beta.ipynb", TABLE_PARAMS, TABLE_BODY)
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)
    return tmp_path


def checksums(*folders: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*"))
            if p.is_file()}


def start_runner(repo: Path, *argv: str) -> subprocess.Popen:
    script = repo / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(run.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), str(repo), *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_lock(lock: Path, pid: int, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if lock.is_file() and f'"pid": {pid}' in lock.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"run {pid} never took the lock {lock}")


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------- item 1: concurrency


def test_concurrent_runs_are_isolated_and_a_second_run_to_a_busy_folder_stops(repo, capsys):
    # stand-ins for the committed results and for the executed notebooks the course site renders
    for d, name, text in [("results/01_alpha", "table.csv", "value,committed\n"), ("figures/01_alpha", "plot.png",
                          "png committed"), ("build/smoke", "01_alpha.ipynb", "{}"), ("build/teaching",
                          "01_alpha.ipynb", "{}")]:
        (repo / d).mkdir(parents=True, exist_ok=True)
        (repo / d / name).write_text(text)
    before = checksums(repo / "results", repo / "figures", repo / "build")
    a = start_runner(repo, "--profile", "smoke", "--only", "01", "--out", str(repo / "a"), "--set", "value=1",
                     "--set", "sleep_s=5")
    wait_for_lock(repo / "a" / "results" / run.LOCK, a.pid)
    code = main(["--profile", "smoke", "--only", "01", "--out", str(repo / "a")])  # the same folder as run a
    line = one_error_line(capsys.readouterr().err)
    assert code == 3 and f"pid {a.pid}" in line and f"--out {repo / 'a'}" in line, line
    assert "another run is writing to" in line and "--wait" in line
    # a run to another folder while run a executes (in this process: the second of two concurrent runs)
    assert main(["--profile", "smoke", "--only", "01", "--out", str(repo / "b"), "--set", "value=2",
                 "--set", "sleep_s=0"]) == 0
    out, err = a.communicate(timeout=300)
    assert a.returncode == 0, err
    for name, value in (("a", 1), ("b", 2)):
        root = repo / name
        assert (root / "results" / "01_alpha" / "table.csv").read_text() == f"value,{value}\n"
        assert (root / "figures" / "01_alpha" / "plot.png").read_text() == f"png {value}"
        executed = nbformat.read(root / "notebooks" / "01_alpha.ipynb", as_version=4)
        assert f"value = {value}" in "".join(c.source for c in executed.cells)  # its own executed copy
        manifest = json.loads((root / "results" / "manifest.json").read_text())
        assert manifest["notebooks"]["01_alpha"]["overrides"] == {"value": value, "sleep_s": 5 * (2 - value)}
        assert not list((root / ".staging").iterdir()) and not (root / "results" / run.LOCK).exists()
    assert checksums(repo / "results", repo / "figures", repo / "build") == before


def test_set_without_out_writes_its_own_build_folder(repo, capsys):
    (repo / "build" / "smoke").mkdir(parents=True)
    (repo / "build" / "smoke" / "01_alpha.ipynb").write_text("{}")
    assert main(["--profile", "smoke", "--only", "01", "--set", "value=7"]) == 0, capsys.readouterr()
    custom = repo / "build" / "smoke" / "custom"
    assert (custom / "results" / "01_alpha" / "table.csv").read_text() == "value,7\n"
    assert (custom / "notebooks" / "01_alpha.ipynb").is_file()
    assert (repo / "build" / "smoke" / "01_alpha.ipynb").read_text() == "{}"  # the site's notebook: untouched
    assert not (repo / "build" / "smoke" / "results").exists()


def test_stale_lock_is_taken_over_with_a_note_and_wait_waits(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / run.LOCK).write_text(json.dumps({"pid": dead.pid, "command": "python -m helpers.run --only 03"}))
    with run.output_lock(tmp_path, "mine") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"left by a run that ended without releasing it (pid {dead.pid}: python -m helpers.run --only 03" in \
        capsys.readouterr().out
    assert not (tmp_path / run.LOCK).exists()

    held = threading.Event()

    def hold():
        with run.output_lock(tmp_path, "first"):
            held.set()
            time.sleep(0.6)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    with pytest.raises(run.OutputBusyError, match=f"pid {os.getpid()}: first"):
        with run.output_lock(tmp_path, "second"):
            pass
    t0 = time.monotonic()
    with run.output_lock(tmp_path, "third", wait=True):
        waited = time.monotonic() - t0
    t.join()
    assert waited > 0.3 and "[run] waiting for the run writing to" in capsys.readouterr().out


# ---------------------------------------------------------------- items 3, 11, 12: failures and the manifest


def test_failure_keeps_the_good_record_other_entries_and_points_at_the_executed_cell(repo, capsys):
    from helpers.summary import check_inputs

    out = repo / "out"
    assert main(["--profile", "smoke", "--out", str(out), "--set", "value=1"]) == 0, capsys.readouterr()
    results = out / "results"
    good = json.loads((results / "manifest.json").read_text())["notebooks"]
    capsys.readouterr()

    code = main(["--profile", "smoke", "--out", str(out), "--set", "value=2", "--set", "fail=true"])
    captured = capsys.readouterr()
    assert code == 1  # 01 failed and the run stopped there: 02 did not run
    line = one_error_line(captured.err)
    m = re.search(r"failed in cell (\d+)/(\d+) \(In \[(\d+)\] of the executed notebook (\S+)\): "
                  r"ValueError: value 2 is broken on purpose\. ", line)
    assert m, line
    k, n, count, executed = int(m[1]), int(m[2]), int(m[3]), Path(m[4])
    assert f"[run] 01_alpha: cell {k}/{n} failed in" in captured.out  # the progress line: the same numbering
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    assert len(cells) == n and cells[k - 1].execution_count == count
    assert cells[k - 1].outputs[-1]["ename"] == "ValueError"
    assert ("run it again alone: python -m helpers.run --profile smoke --out " f"{out} --only 01 --set value=2 "
            "--set fail=true") in line
    manifest = json.loads((results / "manifest.json").read_text())
    entry = manifest["notebooks"]["01_alpha"]
    assert {k: v for k, v in entry.items() if k != "last_failure"} == good["01_alpha"]  # the good record
    failure = entry["last_failure"]
    assert failure["status"] == "failed" and failure["error"] == "ValueError: value 2 is broken on purpose."
    assert Path(failure["partial_outputs"]).is_dir() and Path(failure["executed_notebook"]) == executed
    assert executed.is_file() and (Path(failure["partial_outputs"]) / "results" / "table.csv").is_file()
    assert manifest["notebooks"]["02_beta"] == good["02_beta"]  # not run this time: its entry stays
    assert (results / "02_beta" / "table.csv").read_text() == "value,1\n"
    assert (results / "01_alpha" / "table.csv").read_text() == "value,1\n"
    notes = check_inputs(results, {"01_alpha": ["table.csv"], "02_beta": ["table.csv"]})  # 08 accepts them
    assert all("no git history" in note for note in notes)


def test_failure_message_without_a_cell_names_options_the_user_can_pass():
    import argparse

    args = argparse.Namespace(profile="teaching", out=None, overrides=["n_boot=50"], keep_going=False)
    o = run.run_outputs("teaching", None, custom=True)
    entry = {"cell": None, "error": "DeadKernelError: the kernel died.", "partial_outputs": "/p/failed/02_x",
             "executed_notebook": "/p/failed/02_x/02_x.ipynb"}
    msg = run.failure_message(Path("02_x.ipynb"), entry, o, args)
    assert msg.startswith("notebook 02_x.ipynb failed before or outside a cell (executed notebook: "
                          "/p/failed/02_x/02_x.ipynb): DeadKernelError: the kernel died. Its partial")
    assert msg.endswith("python -m helpers.run --only 02 --set n_boot=50 (--keep-going runs the others after a "
                        "failure)")


# ------------------------------------------------------------- items 7, 10, 13: events, types, quiet kernel


def test_events_are_summarised_and_a_string_becomes_a_list_and_the_kernel_is_quiet(tmp_path, monkeypatch, capfd):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    write_notebook(nbdir, "01_events.ipynb", EVENTS_PARAMS, EVENTS_BODY)
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)
    monkeypatch.delenv(events.ENV, raising=False)
    out = tmp_path / "out"
    code = main(["--out", str(out), "--set", "ood_datasets=/data/my_ood"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert ("[run] note: --set ood_datasets=/data/my_ood is read as the one-element list [\"/data/my_ood\"]; "
            "several values: --set ood_datasets='[\"/data/my_ood\", \"...\"]'") in captured.out
    assert json.loads((out / "results" / "01_events" / "ood.json").read_text()) == ["/data/my_ood"]
    for expected in ["[run] 01_events: skipped 2 file(s) of toy: a.png, b.png",
                     "[run] 01_events: rebuilt: text-embedding cache /c/t.npy is damaged (bad); rebuilding it",
                     "[run] 01_events: 2 UserWarning(s), first: first odd thing"]:
        assert expected in captured.out.splitlines(), captured.out
    manifest = json.loads((out / "results" / "manifest.json").read_text())
    assert manifest["notebooks"]["01_events"]["events"] == {
        "skipped": {"toy": ["/d/toy/cat/a.png", "/d/toy/dog/b.png"]},
        "rebuilt": ["text-embedding cache /c/t.npy is damaged (bad); rebuilding it"],
        "warnings": {"UserWarning": {"count": 2, "first": "first odd thing"}}}
    assert "without encryption" not in captured.err + captured.out  # the kernel's TCP warning (issue item 13)
    assert events.ENV not in os.environ


def test_events_merge_and_describe_many_files():
    one = events.summarize([{"kind": "skipped", "dataset": "d", "files": [f"/x/{i}.png" for i in range(7)]},
                            {"kind": "warning", "category": "UserWarning", "message": "m1"}])
    two = events.summarize([{"kind": "skipped", "dataset": "d", "files": ["/x/0.png", "/x/9.png"]},
                            {"kind": "warning", "category": "UserWarning", "message": "m2"},
                            {"kind": "warning", "category": "FutureWarning", "message": "f"}])
    both = events.merge([one, {}, two])
    assert both["skipped"]["d"] == [f"/x/{i}.png" for i in (0, 1, 2, 3, 4, 5, 6, 9)]
    assert both["warnings"] == {"UserWarning": {"count": 2, "first": "m1"}, "FutureWarning": {"count": 1,
                                                                                                "first": "f"}}
    assert events.describe(both)[0] == "skipped 8 file(s) of d: 0.png, 1.png, 2.png, 3.png, 4.png and 3 more"


def test_record_and_the_warning_hook_write_only_when_asked(tmp_path, monkeypatch):
    import warnings

    path = tmp_path / "ev.jsonl"
    monkeypatch.delenv(events.ENV, raising=False)
    events.record("skipped", dataset="d", files=["a"])
    assert not path.exists()
    monkeypatch.setenv(events.ENV, str(path))
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda *a, **k: shown.append(str(a[0])))
    events.install()
    events.install()  # once
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("feature cache /f is stale or damaged (x); extracting the features again", stacklevel=1)
        warnings.warn("plain", FutureWarning, stacklevel=1)
    assert shown == ["feature cache /f is stale or damaged (x); extracting the features again", "plain"]
    got = events.read(path)
    assert [(e["kind"], e["category"]) for e in got] == [("rebuilt", "UserWarning"), ("warning", "FutureWarning")]


def test_set_values_are_checked_against_the_parameters_cell(tmp_path, monkeypatch, capsys):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    write_notebook(nbdir, "01_events.ipynb", EVENTS_PARAMS + "lr = 0.1\nanything = None\nexpr = 1 / 3\n"
                   "flag = False\nmapping = {'a': 1}\n", EVENTS_BODY)
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)
    code = main(["--out", str(tmp_path / "out"), "--set", "n_boot=abc"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line == ('error: --set n_boot=abc: notebook 01_events expects an integer for n_boot (its '
                                  'default is 200), not a string ("abc"). Fix: e.g. --set n_boot=200')
    assert not (tmp_path / "out" / "results" / "manifest.json").exists()
    nb = nbdir / "01_events.ipynb"
    defaults, names = {"01_events": run.parameter_defaults(nb)}, {"01_events": run.parameter_names(nb)}
    ok = {"lr": 1, "anything": [1], "expr": "x", "flag": True, "mapping": {"b": 2}, "n_boot": 5}
    assert run.typed_overrides(ok, defaults, names) == {"01_events": ok}
    for key, value, says in [("n_boot", True, "expects an integer"), ("n_boot", 2.5, "not a number (2.5)"),
                             ("lr", "fast", "expects a number"), ("flag", "yes", "expects a boolean"),
                             ("mapping", [1], "expects a mapping"), ("ood_datasets", 3, "expects a list"),
                             ("n_boot", None, "not null")]:
        with pytest.raises(UsageError, match=re.escape(says)):
            run.typed_overrides({key: value}, defaults, names)


def test_feature_cache_hit_reports_its_skipped_images(tmp_path, monkeypatch):
    import numpy as np

    from helpers import features
    from helpers.cache import write_arrays

    folder, key = tmp_path / "feat", {"dataset": "toy", "model_id": "m"}
    entry = features.cache_entry(folder, key)
    write_arrays(entry, {"labels": np.zeros(1, dtype=np.int64)})
    entry.commit({"n": 1, "paths": ["/d/ok.png"], "failed": ["/d/bad.png"], "classes": ["c"], "class_names": ["c"]})
    monkeypatch.setenv(events.ENV, str(tmp_path / "ev.jsonl"))
    assert features._load_cached(folder, key).failed == ["/d/bad.png"]
    assert events.read(tmp_path / "ev.jsonl") == [{"kind": "skipped", "dataset": "toy", "files": ["/d/bad.png"]}]
