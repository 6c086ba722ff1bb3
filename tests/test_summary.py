"""Notebook 08's reading, checking and aggregation (helpers/summary.py, helpers/published.py, report formats)."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from helpers import published, summary
from helpers.report import save_figure, save_table


def _rows(notebook, method, shots, seed, label, sets_auroc, fpr=50.0, acc=60.0, model="m", detector="d",
          params=None):
    return [{"notebook": notebook, "step": "main", "model": model, "method": method, "shots": shots, "seed": seed,
             "detector": detector, "params": json.dumps(params or {}), "detector_label": label, "id_set": "id", "ood_set": o, "n_id": 100, "auroc": a, "auroc_lo": a - 1,
             "auroc_hi": a + 1, "fpr95": fpr, "fpr95_lo": fpr - 2, "fpr95_hi": fpr + 2, "id_acc": acc}
            for o, a in sets_auroc.items()]


@pytest.fixture
def scores():
    return pd.DataFrame(
        _rows("02_zero_shot", "zero-shot", 0, 0, "MCM (T=1)", {"a": 70.0, "b": 80.0})
        + _rows("04_finetune", "fine-tune", "16", 1, "head · energy", {"a": 60.0, "b": 90.0}, acc=70.0)
        + _rows("04_finetune", "fine-tune", "16", 2, "head · energy", {"a": 64.0, "b": 86.0}, acc=72.0)
        + _rows("04_finetune", "fine-tune", "16", 1, "head · energy", {"a": 1.0, "b": 1.0}, model="other")
        + [{**r, "step": "protocol"} for r in _rows("02_zero_shot", "zero-shot", 0, 0, "X", {"a": 1.0})])


def test_main_comparison_means_over_seeds_and_averages_over_sets(scores):
    out = summary.main_comparison(scores, models=["m"])
    ft = out[out["method"] == "fine-tune"].set_index("ood_set")
    # by hand: seeds 1, 2 -> a: (60 + 64) / 2, b: (90 + 86) / 2; std of (60, 64) with ddof 1 = 2.828...
    assert ft.loc["a", "auroc"] == 62.0 and ft.loc["b", "auroc"] == 88.0
    assert ft.loc["a", "auroc_lo"] == 61.0 and ft.loc["a", "auroc_seed_std"] == pytest.approx(np.std([60, 64], ddof=1))
    assert ft.loc["a", "seeds"] == 2 and ft.loc["a", "id_acc"] == 71.0
    assert ft.loc["average", "auroc"] == 75.0 and np.isnan(ft.loc["average", "auroc_lo"])
    assert set(out["model"]) == {"m"}, "rows of another model are left out"
    assert "X" not in set(out["detector_label"]), "only the main step is compared"
    assert list(out["ood_set"][:3]) == ["a", "b", "average"], "each group's average follows its sets"


def test_comparison_wide_formats_cis_and_labels(scores):
    wide = summary.comparison_wide(summary.main_comparison(scores, models=["m"])).set_index("row")
    assert wide.loc["04 · fine-tune (16-shot) · head · energy", "a"] == "62.0 [61.0, 63.0]"
    assert wide.loc["02 · MCM (T=1)", "average"] == "75.0"
    assert list(wide.columns) == ["a", "b", "average", "ID acc"]


def _results(tmp_path, manifest):
    for nb, files in summary.NEEDS.items():
        (tmp_path / nb).mkdir(parents=True)
        for f in files:
            (tmp_path / nb / f).write_text("x\n")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_missing_table_names_the_notebook_to_run(tmp_path):
    root = _results(tmp_path, {"notebooks": {}})
    (root / "05_setar" / "selected_ratios.csv").unlink()
    with pytest.raises(summary.MissingResultsError, match=r"selected_ratios.csv does not exist.*--only 05"):
        summary.check_inputs(root)


def test_failed_notebook_in_the_manifest_is_reported(tmp_path):
    root = _results(tmp_path, {"profile": "smoke", "notebooks": {"03_probes": {"status": "failed", "error": "boom"}}})
    with pytest.raises(summary.MissingResultsError,
                       match=rf"03_probes failed: boom.*--profile smoke --out {tmp_path.parent} --only 03"):
        summary.check_inputs(root)


def test_rerun_hint_writes_where_notebook_08_reads():
    from helpers.paths import REPO_ROOT

    assert summary.rerun_hint("04_finetune", "teaching", REPO_ROOT / "results").endswith("helpers.run --only 04")
    assert summary.rerun_hint("04_finetune", "smoke", REPO_ROOT / "build" / "smoke" / "results").endswith(
        "helpers.run --profile smoke --only 04")
    assert summary.rerun_hint("04_finetune", None, "/x/y/results").endswith("helpers.run --out /x/y --only 04")


def test_table_from_an_older_commit_is_stale(tmp_path, monkeypatch):
    entries = {nb: {"status": "ok", "git_commit": "c0ffee" * 6} for nb in summary.NEEDS}
    root = _results(tmp_path, {"notebooks": entries})
    monkeypatch.setattr(summary, "changed_since", lambda commit, nb: ["helpers/setar/edit.py"] if nb == "05_setar" else [])
    with pytest.raises(summary.StaleResultsError, match=r"05_setar was produced at commit c0ffeec0ffee.*edit.py.*--only 05"):
        summary.check_inputs(root)
    monkeypatch.setattr(summary, "changed_since", lambda commit, nb: None)
    notes = summary.check_inputs(root)
    assert len(notes) == len(summary.NEEDS) and "no git history" in notes[0]


def test_changed_since_reads_git(tmp_path, monkeypatch):
    def git(*a):
        return subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@t"), git("config", "user.name", "t")
    (tmp_path / "helpers").mkdir(), (tmp_path / "notebooks").mkdir()
    (tmp_path / "helpers" / "a.py").write_text("1\n")
    (tmp_path / "notebooks" / "04_finetune.ipynb").write_text("{}\n")
    (tmp_path / "notebooks" / "05_setar.ipynb").write_text("{}\n")
    git("add", "-A"), git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    import helpers.run

    monkeypatch.setattr(helpers.run, "REPO_ROOT", tmp_path)  # the runner's git helper, which summary calls
    assert summary.changed_since(first, "04_finetune") == []
    (tmp_path / "notebooks" / "05_setar.ipynb").write_text('{"a": 1}\n')
    git("commit", "-qam", "two")
    assert summary.changed_since(first, "04_finetune") == [], "another notebook's change does not make 04 stale"
    assert summary.changed_since(first, "05_setar") == ["notebooks/05_setar.ipynb"]
    (tmp_path / "helpers" / "a.py").write_text("2\n")
    git("commit", "-qam", "three")
    assert summary.changed_since(first, "04_finetune") == ["helpers/a.py"]
    assert summary.changed_since("0" * 40, "04_finetune") is None


def test_latex_table_is_booktabs_and_escaped(tmp_path):
    save_table(pd.DataFrame({"method": ["a_b", "c"], "auroc": [71.234, 80.0]}), "t", tmp_path, latex=True)
    tex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "a\\_b & 71.23" in tex and "c & 80.00" in tex


def test_pdf_and_png_figures_are_reproducible(tmp_path):
    import matplotlib.pyplot as plt

    def draw(folder):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save_figure(fig, "f", folder, ("png", "pdf"))
        plt.close(fig)
        return [(folder / f"f.{x}").read_bytes() for x in ("png", "pdf")]

    first, second = draw(tmp_path / "a"), draw(tmp_path / "b")
    assert first[1].startswith(b"%PDF") and first == second


def test_published_claims_measure_ours_on_the_summary():
    energy, nice = {"T": 1.0, "score": "energy", "seed": 1}, {"T": 0.01, "prompts": "nice", "mining": "fixed"}
    rows = (_rows("03_probes", "zero-shot", 0, 0, "PLP · energy", {"a": 80.0, "b": 70.0}, detector="plp",
                  params=energy)
            + _rows("03_probes", "zero-shot", 0, 0, "PLP · MSP", {"a": 99.0, "b": 99.0}, detector="plp",
                    params={**energy, "score": "msp"})  # a label prefix would not tell it apart; params do
            + _rows("03_probes", "zero-shot", 0, 0, "MCM (T=1, prompts=plp5)", {"a": 70.0, "b": 70.0}, detector="mcm",
                    params={"T": 1.0, "prompts": "plp5"})
            + _rows("04_finetune", "linear probe", "16", 1, "linear probe · energy", {"a": 90.0},
                    detector="linear_probe", params=energy)
            + _rows("04_finetune", "fine-tune", "16", 1, "head · energy", {"a": 81.0}, detector="head",
                    params={"T": 1.0, "score": "energy"})
            + [{**r, "lam": 0.001} for r in
               _rows("06_cma", "CMA (λ=0.001)", "all", 0, "NegLabel (T=0.01, n_groups=1)", {"a": 66.0}, fpr=40, acc=63,
                     detector="neglabel", params=nice)
               + _rows("06_cma", "CMA (λ=0.001)", "all", 0, "NegLabel (T=0.01, prompts=single, n_groups=1)",
                       {"a": 10.0}, fpr=90, acc=1, detector="neglabel", params={**nice, "prompts": "single"})
               + _rows("06_cma", "CMA (λ=0.001)", "all", 0, "NegLabel (T=0.01, n_groups=1, mining=own)",
                       {"a": 20.0}, fpr=70, acc=2, detector="neglabel", params={**nice, "mining": "own"})]
            + [{**r, "lam": 1.0} for r in  # another λ under another name: the claim takes λ = 0.001 by its column
               _rows("06_cma", "CMA (λ=1)", "all", 0, "NegLabel (T=0.01, n_groups=1)", {"a": 99.0}, fpr=1, acc=99,
                     detector="neglabel", params=nice)])
    s = summary.main_comparison(pd.DataFrame(rows))
    fit = pd.DataFrame({"pairing": ["p", "q"], "r2": [0.5, 0.8]})
    got = published.claims(s, fit).set_index("claim")["ours"]
    assert got.filter(like="PLP minus MCM").item() == 5.0   # (80+70)/2 - (70+70)/2
    assert got.filter(like="linear probe minus").item() == 9.0
    assert got.filter(like="R²").item() == 0.8
    assert got.filter(like="average FPR95").item() == 40 and got.filter(like="CMA, ID").item() == 63
    assert np.isnan(got.filter(like="zero-shot ImageNet").item()), "no zero-shot MCM rows: no number, not a guess"
    zs = summary.main_comparison(pd.DataFrame(_rows("01_features", "zero-shot", 0, 0, "MCM (T=1)", {"a": 1.0}, acc=61.5,
                                                    detector="mcm", params={"T": 1.0, "prompts": "single"})))
    own = published.claims(zs, notebook="01_features")
    assert own["notebook"].tolist() == ["01_features"] and own["ours"].item() == 61.5


def test_family_pairings_name_the_table_columns():
    fits = pd.DataFrame({"pairing": ["MCM (T=1) acc vs MCM (T=1)", "linear probe · MSP acc vs kNN (k=1)"]})
    assert summary.family_pairings(fits) == {
        "MCM (T=1) acc vs MCM (T=1)": ("acc: MCM (T=1)", "AUROC: MCM (T=1)"),
        "linear probe · MSP acc vs kNN (k=1)": ("acc: linear probe · MSP", "AUROC: kNN (k=1)")}
