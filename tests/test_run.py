"""The papermill runner: smoke-profile execution of every notebook, failure reporting, reproducibility."""

import filecmp
import json
import subprocess

import nbformat
import pytest

import helpers.run as run
from helpers.run import main, notebooks


def test_every_notebook_has_a_parameters_cell():
    assert notebooks(), "no notebooks found"
    for nb_path in notebooks():
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name} needs exactly one cell tagged 'parameters'"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{nb_path.name} has outputs"


def test_failing_notebook_names_notebook_and_cell(tmp_path, monkeypatch, capsys):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / "99_broken.ipynb")
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)
    code = main(["--profile", "smoke", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "99_broken.ipynb failed in cell" in err and "ValueError: broken on purpose" in err
    manifest = json.loads((tmp_path / "out" / "results" / "manifest.json").read_text())
    entry = manifest["notebooks"]["99_broken"]
    assert entry["status"] == "failed" and entry["error"].startswith("ValueError")
    assert entry["cell"] >= 3  # papermill's injected-parameters cell shifts indices by one


@pytest.mark.notebook
def test_smoke_profile_twice_gives_identical_tables(smoke_series, tmp_path):
    """Every notebook in the smoke profile (this is the notebooks' smoke test) twice: the session's shared run
    (``smoke_series``, cold where the cache was empty) and a second, cached run here."""
    a, b = smoke_series.out, tmp_path / "b"
    assert smoke_series.code == 0, f"the smoke series failed: {smoke_series.manifest.get('notebooks')}"
    assert main(["--profile", "smoke", "--out", str(b)]) == 0
    manifest = json.loads((a / "results" / "manifest.json").read_text())
    assert set(manifest["notebooks"]) == {p.stem for p in notebooks()}
    assert all(e["status"] == "ok" for e in manifest["notebooks"].values())
    assert manifest["models"] and manifest["datasets"]["cifar10"]["sha256"]
    tables_a = sorted(p.relative_to(a) for p in (a / "results").rglob("*.csv"))
    tables_b = sorted(p.relative_to(b) for p in (b / "results").rglob("*.csv"))
    assert tables_a and tables_a == tables_b
    for rel in tables_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), f"{rel} differs"
    for nb in notebooks():
        assert list((a / "figures" / nb.stem).glob("*.png")), f"{nb.stem} wrote no figure"
    # notebook 08 summarised *this* run's tables (the runner passes results_root), not the committed ones
    import pandas as pd

    from helpers.profiles import COMMON

    main_rows = pd.read_csv(a / "results" / "08_figures" / "main_comparison.csv")
    assert set(main_rows["model"].str.split("+").str[0]) == {COMMON["smoke"]["model"]}
    assert (a / "figures" / "08_figures" / "main_comparison.pdf").is_file()


def test_manifest_paths_are_repository_relative():
    from helpers.paths import REPO_ROOT
    from helpers.report import _portable

    assert _portable(REPO_ROOT / "results" / "01_features" / "t.csv") == "results/01_features/t.csv"
    assert _portable("openai") == "openai"  # a pretrained tag is not a path, whatever the working folder
    assert _portable("/elsewhere/m.pt") == "/elsewhere/m.pt"


def _git(*args):
    from helpers.paths import REPO_ROOT

    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.mark.results
def test_committed_results_are_current():
    """The committed results/ were produced by the committed helpers/ and notebooks/ (deselect: -m 'not results')."""
    from helpers.paths import REPO_ROOT

    fix = "Fix: rerun `make all MIRROR=<mirror>` on a clean tree and commit results/ and figures/."
    try:
        inside = _git("rev-parse", "--is-inside-work-tree")
    except OSError:
        pytest.skip("git is not installed: cannot compare the results' commit with HEAD")
    if inside.returncode != 0 or _git("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        pytest.skip(f"{REPO_ROOT} has no git history: cannot compare the results' commit with HEAD")
    manifest = json.loads((REPO_ROOT / "results" / "manifest.json").read_text())
    commit = manifest.get("git_commit")
    assert commit, f"results/manifest.json records no git_commit. {fix}"
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
            pytest.skip(f"shallow clone: the results' commit {commit[:12]} is not in the fetched history "
                        f"(git fetch --unshallow to check it)")
        pytest.fail(f"results/manifest.json names commit {commit[:12]}, which is not in this repository. {fix}")
    changed = _git("diff", "--name-only", commit, "HEAD", "--", "helpers", "notebooks").stdout.split()
    assert _git("diff", "--quiet", commit, "HEAD", "--", "helpers", "notebooks").returncode == 0, (
        f"results/ are stale: {len(changed)} file(s) of helpers/ or notebooks/ changed since the commit "
        f"{commit[:12]} that produced them ({', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''}). {fix}")
    assert manifest.get("git_dirty") is False, (
        f"results/manifest.json says helpers/ or notebooks/ had uncommitted changes when the results were made "
        f"(git_dirty={manifest.get('git_dirty')!r}; absent means it was not recorded). {fix}")
    with_overrides = {k: e["overrides"] for k, e in manifest.get("notebooks", {}).items() if e.get("overrides")}
    assert not with_overrides, f"results/ were made with --set overrides {with_overrides}. {fix}"
