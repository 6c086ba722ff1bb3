"""The runner's options and guarantees, on tiny throw-away notebooks: typed ``--set`` overrides, ``--only``
checks, one-line errors, atomic outputs, per-cell progress, git provenance in the manifest."""

import json
import re
import subprocess

import nbformat
import pytest

import helpers.run as run
from helpers.report import PROVENANCE
from helpers.run import main, parse_overrides

PARAMS_01 = """profile = "x"
ood_datasets = ["dtd10"]
on_error = "fail"
n_boot = 200
projection_points = 2000
results_dir = "../results/01_alpha"
figures_dir = "../figures/01_alpha"
"""
BODY_01 = [
    "import json, pathlib, sys",
    "types = [type(ood_datasets).__name__, type(on_error).__name__, type(n_boot).__name__]\n"
    "pathlib.Path(results_dir, 'params.json').write_text(json.dumps(\n"
    "    {'ood_datasets': ood_datasets, 'on_error': on_error, 'n_boot': n_boot, 'types': types}))",
    "sys.stderr.write('features toy:  50%|#####     | 5/10 [00:01<00:01,  5.00it/s]\\r'); sys.stderr.flush()",
    "pathlib.Path(results_dir, '_provenance.json').write_text(json.dumps({'models': {'toy-model': {'arch': 'A'}}}))\n"
    "pathlib.Path(figures_dir, 'fig.png').write_bytes(b'png')",
]
PARAMS_02 = """profile = "x"
on_error = "fail"
results_dir = "../results/02_beta"
figures_dir = "../figures/02_beta"
"""
BODY_02 = [
    "import json, pathlib\n"
    "pathlib.Path(results_dir, 'params.json').write_text(json.dumps({'on_error': on_error, 'n_boot': n_boot}))",
]
PARAMS_05 = """version = 0
fail = False
results_dir = "../results/05_gamma"
figures_dir = "../figures/05_gamma"
"""
BODY_05 = [
    "import pathlib\n"
    "pathlib.Path(results_dir, 'table.csv').write_text(f'version,{version}\\n')\n"
    "pathlib.Path(figures_dir, 'plot.png').write_bytes(f'png {version}'.encode())\n"
    "if version == 1:\n"
    "    pathlib.Path(results_dir, 'only_in_v1.csv').write_text('x\\n')",
    "if fail:\n"
    "    raise ValueError(f'version {version} is broken on purpose.')",
]


def write_notebook(nbdir, name, params, body):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {name}"),
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(src) for src in body],
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / name)


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository with notebooks 01, 02 and 05, committed."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    write_notebook(nbdir, "01_alpha.ipynb", PARAMS_01, BODY_01)
    write_notebook(nbdir, "02_beta.ipynb", PARAMS_02, BODY_02)
    write_notebook(nbdir, "05_gamma.ipynb", PARAMS_05, BODY_05)
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "notebooks", "helpers")
    git(tmp_path, "commit", "-q", "-m", "notebooks")
    return tmp_path


def one_error_line(err):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err and "usage:" not in err
    return lines[0]


def test_parse_overrides_reads_yaml_types():
    got = parse_overrides(['ood_datasets=["/data/a","/data/b"]', "on_error=skip", "n_boot=50",
                           "max_per_class=null", "amp=true", "T_mcm=0.5", "word_list=",
                           "model=ViT-B-16//abs/ckpt.safetensors", "n_boot=60"])
    assert got == {"ood_datasets": ["/data/a", "/data/b"], "on_error": "skip", "n_boot": 60, "max_per_class": None,
                   "amp": True, "T_mcm": 0.5, "word_list": None, "model": "ViT-B-16//abs/ckpt.safetensors"}
    assert type(got["n_boot"]) is int


def test_parameter_names_come_from_the_parameters_cell(repo):
    assert run.parameter_names(repo / "notebooks" / "01_alpha.ipynb") == [
        "profile", "ood_datasets", "on_error", "n_boot", "projection_points", "results_dir", "figures_dir"]


@pytest.mark.parametrize("argv, expected", [
    (["--only", "9"], "no notebook 09 in .*; available: 01 02 05$"),
    (["--only", "01", "9"], "no notebook 09 in .*; available: 01 02 05$"),
    (["--set", "n_bot=3"], r"unknown parameter 'n_bot' \(did you mean 'n_boot'\?\) for notebook\(s\) 01_alpha "
                           r"02_beta 05_gamma; known: fail n_boot on_error ood_datasets profile projection_points "
                           r"version$"),
    (["--only", "02", "--set", "projection_points=5"], "unknown parameter 'projection_points' for notebook"),
    (["--set", "results_dir=/tmp/x"], "results_dir is set by the runner; use --out DIR"),
    (["--set", "n_boot"], "--set takes KEY=VALUE"),
    (["--set", "ood_datasets=[1,"], "--set ood_datasets: '\\[1,' is not valid YAML"),
    (["--profile", "nope"], "argument --profile: invalid choice: 'nope'"),
])
def test_usage_errors_are_one_line_exit_2(repo, capsys, argv, expected):
    code = main(["--out", str(repo / "out"), *argv])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and re.search(expected, line), line
    assert not (repo / "out" / "results" / "manifest.json").exists()


def test_overrides_are_typed_injected_where_defined_and_recorded(repo, capsys):
    code = main(["--profile", "smoke", "--out", str(repo / "out"), "--only", "01", "02",
                 "--set", 'ood_datasets=["/data/a","/data/b"]', "--set", "on_error=skip", "--set", "n_boot=50"])
    out = capsys.readouterr().out
    assert code == 0, out
    res = repo / "out" / "results"
    p01 = json.loads((res / "01_alpha" / "params.json").read_text())
    assert p01 == {"ood_datasets": ["/data/a", "/data/b"], "on_error": "skip", "n_boot": 50,
                   "types": ["list", "str", "int"]}
    p02 = json.loads((res / "02_beta" / "params.json").read_text())
    assert p02 == {"on_error": "skip", "n_boot": 20}  # 02 does not define n_boot: the smoke profile's value stays
    manifest = json.loads((res / "manifest.json").read_text())
    assert manifest["notebooks"]["01_alpha"]["overrides"] == {"ood_datasets": ["/data/a", "/data/b"],
                                                              "on_error": "skip", "n_boot": 50}
    assert manifest["notebooks"]["02_beta"]["overrides"] == {"on_error": "skip"}
    # provenance is read from the staging folder and not left among the tables
    assert manifest["models"] == {"toy-model": {"arch": "A"}} and not (res / "01_alpha" / PROVENANCE).exists()
    assert (repo / "out" / "figures" / "01_alpha" / "fig.png").read_bytes() == b"png"
    # git provenance: the notebooks were committed and untouched when the run started
    assert manifest["git_commit"] == git(repo, "rev-parse", "HEAD") and manifest["git_dirty"] is False
    assert all(e["git_commit"] == manifest["git_commit"] and e["git_dirty"] is False
               for e in manifest["notebooks"].values()), "each notebook records the commit it ran at (notebook 08 reads it)"
    # progress: one line per code cell (the injected-parameters cell included), numbered out of the total
    executed = nbformat.read(repo / "out" / "notebooks" / "01_alpha.ipynb", as_version=4)  # --out: its own copy
    n_code = sum(c.cell_type == "code" for c in executed.cells)
    cells = re.findall(r"^\[run\] 01_alpha: cell (\d+)/(\d+) done in \d+\.\d s \(\d+\.\d s elapsed\)$", out, re.M)
    assert [int(k) for k, _ in cells] == list(range(1, n_code + 1)) and {int(n) for _, n in cells} == {n_code}
    assert "[run] 01_alpha: features toy:  50%|#####     | 5/10" in out  # the notebook's text progress bar


def test_overrides_keep_the_committed_teaching_results(repo, capsys):
    code = main(["--profile", "teaching", "--only", "05", "--set", "version=7"])
    assert code == 0, capsys.readouterr()
    assert not (repo / "results").exists()
    assert (repo / "build" / "teaching" / "custom" / "results" / "05_gamma" / "table.csv").read_text() == "version,7\n"


def test_failed_notebook_keeps_previous_outputs_and_writes_none(repo, capsys):
    out_dir = repo / "out"
    args = ["--profile", "smoke", "--out", str(out_dir), "--only", "05"]
    res, figs = out_dir / "results" / "05_gamma", out_dir / "figures" / "05_gamma"
    assert main([*args, "--set", "version=1"]) == 0
    assert (res / "table.csv").read_text() == "version,1\n" and (res / "only_in_v1.csv").is_file()
    assert not (out_dir / "build").exists() and not list((out_dir / ".staging").iterdir())
    capsys.readouterr()

    code = main([*args, "--set", "version=2", "--set", "fail=true"])
    captured = capsys.readouterr()
    assert code == 1
    line = one_error_line(captured.err)
    assert "notebook 05_gamma.ipynb failed in cell" in line and "ValueError: version 2 is broken on purpose" in line
    assert ".." not in line.replace("...", "")
    assert re.search(r"^\[run\] 05_gamma: cell \d+/\d+ failed in", captured.out, re.M)
    assert (res / "table.csv").read_text() == "version,1\n"  # untouched
    assert (figs / "plot.png").read_bytes() == b"png 1"
    assert sorted(p.name for p in res.iterdir()) == ["only_in_v1.csv", "table.csv"]
    manifest = json.loads((out_dir / "results" / "manifest.json").read_text())
    assert manifest["notebooks"]["05_gamma"]["last_failure"]["status"] == "failed"  # beside the good entry

    assert main([*args, "--set", "version=3"]) == 0  # a success replaces the whole folder
    assert sorted(p.name for p in res.iterdir()) == ["table.csv"] and (res / "table.csv").read_text() == "version,3\n"
    assert (figs / "plot.png").read_bytes() == b"png 3"
    assert not [p for p in (out_dir / "results").iterdir() if p.name.startswith(".")]


def test_git_dirty_tracks_helpers_and_notebooks(repo):
    assert run.git_dirty() is False and run.git_commit() == git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("outside the code: not dirty")
    assert run.git_dirty() is False
    (repo / "helpers" / "new_module.py").write_text("x = 1\n")  # untracked code counts
    assert run.git_dirty() is True
    (repo / "helpers" / "new_module.py").unlink()
    (repo / "notebooks" / "02_beta.ipynb").write_text("{}")
    assert run.git_dirty() is True


def test_ipywidgets_is_a_dependency_so_tqdm_auto_has_iprogress():
    import tomllib

    from helpers.paths import REPO_ROOT

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ipywidgets" in deps
    assert re.search(r"^\s*- ipywidgets\s*$", (REPO_ROOT / "environment.yml").read_text(), re.M)
    from tqdm.notebook import IProgress

    assert IProgress is not None, "ipywidgets is not installed: pip install -c constraints.txt ipywidgets"
