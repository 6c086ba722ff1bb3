"""The evaluation core: evaluate() and its canonical long table, the table views, paired claims, the bootstrap,
derived models, the protocol grid, the modality gap, code hashes, and a new detector usable by name."""

import json
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers import detectors, tables
from helpers.benchmark import Benchmark
from helpers.evaluation import COLUMNS, Evaluation, evaluate, notebook_of, read_table
from helpers.features import Features
from helpers.metrics import auroc_fast, bootstrap_counts, fpr_fast, ood_metrics

NAMES = ["a", "b", "c"]


def _feats(name, image, labels=None):
    n = len(image)
    return Features(name, "m", np.zeros(n, int) if labels is None else labels, [f"{name}/{i}" for i in range(n)],
                    NAMES, NAMES, image=image.astype(np.float32), meta={"key": {"dataset": name}})


class _Model:
    """Enough of a LoadedModel for detectors that read fixed text embeddings (patched below)."""

    model_id = image_id = text_id = "toy/model"
    name = "toy"
    head = class_text = None


@pytest.fixture
def toy(monkeypatch):
    rng = np.random.default_rng(0)
    text = np.eye(3, 4)
    import helpers.detectors.mcm as mcm_module

    monkeypatch.setattr(mcm_module, "text_features", lambda *a, **k: text)
    labels = rng.integers(0, 3, 200)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    idf = _feats("id", unit(text[labels] * 2 + rng.normal(size=(200, 4))), labels)
    ood = {"far": _feats("far", unit(rng.normal(size=(150, 4)))), "near": _feats("near", unit(
        text[rng.integers(0, 3, 120)] + rng.normal(size=(120, 4))))}
    return Benchmark(_Model(), "id", idf, ood), text


def test_evaluate_rows_equal_sklearn_and_a_direct_computation(toy, tmp_path):
    bench, text = toy
    ev = evaluate(["mcm", {"name": "energy", "T": 0.01}], bench, results_dir=tmp_path / "02_zero_shot", n_boot=50)
    assert list(ev.table.columns) == COLUMNS and len(ev.table) == 4
    row = ev.table.set_index(["detector_label", "ood_set"]).loc[("MCM (T=1)", "near")]
    cos_id, cos_ood = bench.id.image @ text.T, bench.ood["near"].image @ text.T
    s_id = np.exp(cos_id).max(1) / np.exp(cos_id).sum(1)
    s_ood = np.exp(cos_ood).max(1) / np.exp(cos_ood).sum(1)
    y = np.r_[np.ones(200), np.zeros(120)]
    assert row.auroc == pytest.approx(100 * roc_auc_score(y, np.r_[s_id, s_ood]), abs=1e-9)
    assert row.aupr_in == pytest.approx(100 * average_precision_score(y, np.r_[s_id, s_ood]), abs=1e-9)
    assert row.fpr95 == pytest.approx(100 * ood_metrics(s_id, s_ood)["fpr95"])
    assert row.auroc_lo <= row.auroc <= row.auroc_hi
    assert row.id_acc == pytest.approx(100 * np.mean(cos_id.argmax(1) == bench.id.labels))
    assert (row.notebook, row.step, row.method, row.shots, row.n_id, row.n_ood) == ("02_zero_shot", "main",
                                                                                      "zero-shot", "0", 200, 120)
    assert (row.fpr_positive, row.fpr_method) == ("id", "nearest") and json.loads(row.params)["T"] == 1.0
    np.testing.assert_allclose(ev.scores["MCM (T=1)"]["near"], s_ood, rtol=1e-9)


def test_canonical_table_upserts_instead_of_duplicating(toy, tmp_path):
    bench, _ = toy
    out = tmp_path / "results" / "03_probes"
    evaluate(["mcm"], bench, results_dir=out, n_boot=0)
    evaluate(["mcm"], bench, results_dir=out, n_boot=0)  # a re-run cell replaces its rows
    evaluate(["mcm"], bench, results_dir=out, n_boot=0, fpr_positive="ood")  # another convention: new rows
    evaluate(["mcm"], bench, results_dir=out, n_boot=0, method="CoOp", shots=1, seed=2)
    t = read_table(out)
    assert len(t) == 3 * 2 and t.notebook.eq("03_probes").all()  # three runs x two OOD sets
    assert set(zip(t.method, t.shots, t.fpr_positive)) == {("zero-shot", "0", "id"), ("zero-shot", "0", "ood"),
                                                          ("CoOp", "1", "id")}


def test_average_ood_and_wide_views(toy):
    bench, _ = toy
    t = evaluate(["mcm", "max_logit"], bench, n_boot=20).table
    avg = tables.average_ood(t)
    a = avg[(avg.ood_set == "average") & (avg.detector_label == "MCM (T=1)")].iloc[0]
    rows = t[t.detector_label == "MCM (T=1)"]
    assert a.auroc == pytest.approx(rows.auroc.mean()) and a.fpr95 == pytest.approx(rows.fpr95.mean())
    assert np.isnan(a.auroc_lo)  # a mean over sets has no bootstrap interval
    w = tables.wide(t, "auroc")
    assert list(w.columns) == ["far", "near", "average"] and list(w.index) == ["MCM (T=1)", "max-logit (T=1)"]
    text = tables.wide(t, "auroc", ci=True)
    lo, hi = rows.set_index("ood_set").loc["far", ["auroc_lo", "auroc_hi"]]
    assert text.loc["MCM (T=1)", "far"].endswith(f"[{lo:.1f}, {hi:.1f}]")
    d = tables.difference(t, "mcm", {"name": "max_logit"})  # rows found by detector and parameters
    assert d.loc["MCM (T=1) − max-logit (T=1)", "near"] == pytest.approx(w.loc["MCM (T=1)", "near"]
                                                                        - w.loc["max-logit (T=1)", "near"])
    with pytest.raises(tables.SelectionError, match="neglabel"):
        tables.difference(t, "mcm", "neglabel")


def test_with_params_reads_the_params_column(toy):
    bench, _ = toy
    t = tables.with_params(evaluate([{"name": "mcm", "T": T} for T in (0.1, 2.0)], bench, n_boot=0).table, "T")
    assert sorted(set(t["T"])) == [0.1, 2.0]


def test_detector_rows_of_a_spec_fill_in_its_defaults(toy):
    bench, _ = toy
    t = evaluate([{"name": "mcm", "T": 0.01}, {"name": "mcm", "T": 1.0, "prompts": "plp5"}, "mcm"], bench, n_boot=0).table
    for spec, label in [({"name": "mcm", "T": 1.0}, "MCM (T=1)"), ("mcm", "MCM (T=1)"),
                        ({"name": "mcm", "prompts": "plp5"}, "MCM (T=1, prompts=plp5)")]:
        rows = tables.detector_rows(t, spec)  # the defaults fill in what the spec leaves out
        assert set(rows.detector_label) == {label} and len(rows) == t.ood_set.nunique()
    with pytest.raises(tables.SelectionError, match="neglabel"):
        tables.detector_rows(t, "neglabel")


def test_weighted_bootstrap_equals_explicit_resamples():
    from helpers.metrics import weighted_auroc_fpr

    rng = np.random.default_rng(3)
    s_id, s_ood = np.round(rng.normal(1, 1, 80), 1), np.round(rng.normal(0, 1, 60), 1)  # ties on purpose
    w_id, w_ood = bootstrap_counts(80, 30, rng), bootstrap_counts(60, 30, rng)
    assert (w_id.sum(1) == 80).all() and (w_ood.sum(1) == 60).all()
    for positive in ("id", "ood"):
        for method in ("nearest", "interpolate"):
            au, fp = weighted_auroc_fpr(s_id, s_ood, w_id, w_ood, fpr_positive=positive, fpr_method=method)
            for b in range(30):
                i, o = np.repeat(s_id, w_id[b]), np.repeat(s_ood, w_ood[b])
                assert au[b] == pytest.approx(auroc_fast(i, o), abs=1e-12)
                ref = fpr_fast(i, o, method=method) if positive == "id" else fpr_fast(-o, -i, method=method)
                assert fp[b] == pytest.approx(ref, abs=1e-12)


def _evaluation(method, seed, s_id, s_ood, label="d"):
    return Evaluation(pd.DataFrame(), {label: {"id": s_id, "o1": s_ood[0], "o2": s_ood[1]}}, {}, "id", method, "1",
                      seed)


def test_paired_claim_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(5)
    base = [rng.normal(0, 1, 40), [rng.normal(-1, 1, 30), rng.normal(-0.5, 1, 25)]]
    a = [_evaluation("A", s, base[0] + rng.normal(0, 0.3, 40), [o + 0.1 for o in base[1]]) for s in (1, 2)]
    b = [_evaluation("zero-shot", 0, base[0], base[1])]
    r = tables.paired_claim(a, b, "d", "d", n_boot=40, seed=7)

    def diff(idx):  # mean over seeds and OOD sets of AUROC(A) - AUROC(B) on one resample, by brute force
        out = []
        for ea in a:
            sa, sb = ea.scores["d"], b[0].scores["d"]
            out.append(np.mean([roc_auc_score(np.r_[np.ones(len(idx["id"])), np.zeros(len(idx[o]))],
                                              np.r_[sa["id"][idx["id"]], sa[o][idx[o]]])
                                - roc_auc_score(np.r_[np.ones(len(idx["id"])), np.zeros(len(idx[o]))],
                                                np.r_[sb["id"][idx["id"]], sb[o][idx[o]]]) for o in ("o1", "o2")]))
        return 100 * np.array(out)

    full = {k: np.arange(n) for k, n in (("id", 40), ("o1", 30), ("o2", 25))}
    np.testing.assert_allclose(r["per_seed"], diff(full), atol=0.0051)  # rounded to 2 decimals
    gen = np.random.default_rng(7)  # the same draws as paired_claim: one count matrix per set, in set order ...
    counts = {k: bootstrap_counts(n, 40, gen) for k, n in (("id", 40), ("o1", 30), ("o2", 25))}
    seeds = gen.integers(0, 2, (40, 2))  # ... then the seeds, with replacement
    boots = [diff({k: np.repeat(np.arange(c.shape[1]), c[i]) for k, c in counts.items()})[seeds[i]].mean()
             for i in range(40)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    assert (r["ci_lo"], r["ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["verdict"] == ("holds" if lo > 0 else "reversed" if hi < 0 else "within noise")


def test_claim_verdicts_follow_the_interval():
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(1, 1, 300), [rng.normal(0, 1, 300), rng.normal(0, 1, 300)]
    better = [_evaluation("A", s, s_id + 1.0, s_ood) for s in (1, 2, 3)]
    same = [_evaluation("A", s, s_id + rng.normal(0, 1e-3, 300), s_ood) for s in (1, 2, 3)]
    b = [_evaluation("B", s, s_id, s_ood) for s in (1, 2, 3)]
    assert tables.paired_claim(better, b, "d", "d", n_boot=100)["verdict"] == "holds"
    assert tables.paired_claim(b, better, "d", "d", n_boot=100)["verdict"] == "reversed"
    assert tables.paired_claim(same, b, "d", "d", n_boot=100)["verdict"] == "within noise"
    with pytest.raises(ValueError, match="cannot pair"):
        tables.paired_claim(better, b[:1] + b[1:2], "d", "d")


def test_notebook_of_results_dir():
    assert notebook_of("results/02_zero_shot") == "02_zero_shot"
    assert notebook_of("build/x/.staging/04_finetune/results") == "04_finetune"
    assert notebook_of(None) == ""


# --------------------------------------------------------------------------------------------- registry
def test_registry_by_name_dict_and_import_path(tmp_path, monkeypatch):
    assert {"mcm", "gl_mcm", "neglabel", "plp", "knn", "mahalanobis", "head"} <= set(detectors.available())
    assert isinstance(detectors.get({"name": "knn", "k": 3}), detectors.KNN)
    with pytest.raises(detectors.UnknownDetectorError, match="did you mean"):
        detectors.get("mmc")
    with pytest.raises(TypeError, match="parameters are"):
        detectors.get("mcm", temperature=1)
    (tmp_path / "my_dets.py").write_text(textwrap.dedent('''
        from helpers.detectors.mcm import ZeroShotDetector

        class Margin(ZeroShotDetector):
            """Top-1 minus top-2 cosine."""
            name, title = "margin_test", "margin"

            def score(self, image, **_):
                top = self.cosines(image).topk(2, dim=-1).values
                return top[:, 0] - top[:, 1]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    d = detectors.get("my_dets:Margin")
    assert d.label == "margin (T=1)"
    with pytest.raises(detectors.UnknownDetectorError, match="cannot import"):
        detectors.get("my_dets:Nope")


def test_a_new_detector_runs_by_name_with_no_other_edit(toy, tmp_path, monkeypatch):
    """A detector written as one small class (registered in its own module) scores through evaluate() by name."""
    bench, text = toy
    (tmp_path / "brand_new.py").write_text(textwrap.dedent('''
        from helpers.detectors import register
        from helpers.detectors.mcm import ZeroShotDetector

        @register
        class TopCosine(ZeroShotDetector):
            name, title = "top_cosine_test", "top cosine"

            def score(self, image, **_):
                return self.cosines(image).amax(-1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ev = evaluate(["brand_new:TopCosine"], bench, n_boot=0)
    np.testing.assert_allclose(ev.scores["top cosine (T=1)"]["far"], (bench.ood["far"].image @ text.T).max(1),
                               rtol=1e-6)
    assert "top_cosine_test" in detectors.available()  # registered: by plain name from now on
    assert evaluate(["top_cosine_test"], bench, n_boot=0).table.auroc.notna().all()
    sys.modules.pop("brand_new", None)
    detectors.REGISTRY.pop("top_cosine_test", None)


def test_with_defaults_fills_only_unset_accepted_params():
    specs = detectors.with_defaults(["mcm", {"name": "plp", "epochs": 3}, {"name": "linear_probe"}],
                                    plp={"epochs": 10, "pseudo_prompts": "single"},
                                    linear_probe={"epochs": 10, "pseudo_prompts": "single"})
    assert specs[0] == "mcm"
    assert specs[1]["epochs"] == 3 and specs[1]["pseudo_prompts"] == "single"
    assert specs[2]["epochs"] == 10 and "pseudo_prompts" not in specs[2]


def test_scores_are_differentiable_torch(toy):
    """Every zero-shot score is written once in torch: gradients reach the image embedding."""
    bench, _ = toy
    for spec in ("mcm", {"name": "energy", "T": 0.01}, "entropy", "max_logit"):
        d = detectors.get(spec).fit(bench.model, NAMES)
        x = torch.tensor(bench.id.image[:5], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, d=d: d.score(image=v), (x,))
        d.score(image=x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.notebook
def test_a_new_detector_is_usable_by_name_from_a_notebook_parameter(require_data, tmp_path, monkeypatch):
    """Issue 9's acceptance test: one small class in its own file, named in a notebook parameter, nothing else."""
    import os

    from helpers.run import main

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "my_detectors.py").write_text(textwrap.dedent('''
        from helpers.detectors.mcm import ZeroShotDetector

        class Margin(ZeroShotDetector):
            """Top-1 minus top-2 cosine to the class prompts."""
            name, title = "margin_nb", "margin"

            def score(self, image, **_):
                top = self.cosines(image).topk(2, dim=-1).values
                return top[:, 0] - top[:, 1]
    '''))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    assert main(["--profile", "smoke", "--only", "02", "--out", str(out),
                 "--set", 'detectors=["mcm", "my_detectors:Margin"]']) == 0
    t = read_table(out / "results" / "02_zero_shot")
    rows = t[(t.step == "main") & (t.detector_label == "margin (T=1)")]
    assert len(rows) == 4 and rows.auroc.between(0, 100).all() and rows.id_acc.notna().all()
    assert set(t[t.step == "main"].detector_label) == {"MCM (T=1)", "margin (T=1)"}


def test_metrics_are_cached_by_the_scores(tmp_cache, monkeypatch):
    import helpers.evaluation as ev
    from helpers.metrics import ood_report

    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    first = ev.metrics_of(s_id, s_ood, n_boot=30, fpr_positive="id", fpr_method="nearest")
    assert first == pytest.approx(ood_report(s_id, s_ood, n_boot=30, seed=0))
    def recomputed(*a, **k):
        raise RuntimeError("recomputed a cached row")

    monkeypatch.setattr(ev, "ood_report", recomputed)
    assert ev.metrics_of(s_id, s_ood, n_boot=30, fpr_positive="id", fpr_method="nearest") == first
    with pytest.raises(RuntimeError, match="recomputed"):  # other scores or conventions are not served from it
        ev.metrics_of(s_id, s_ood + 1e-9, n_boot=30, fpr_positive="id", fpr_method="nearest")
    with pytest.raises(RuntimeError, match="recomputed"):
        ev.metrics_of(s_id, s_ood, n_boot=30, fpr_positive="ood", fpr_method="nearest")


def test_evaluate_writes_factor_columns_and_refuses_clashing_keys(toy, tmp_path):
    from helpers.evaluation import FACTORS

    bench, _ = toy
    factors = {"far": {"ood_set": "src", "attack": "none", "attack_steps": 0},
               "near": {"ood_set": "src", "attack": "smooth", "attack_steps": 10, "eps_255": 2.0}}
    t = evaluate(["mcm"], bench, n_boot=0, factors=factors, results_dir=tmp_path / "07_adversarial").table
    assert list(t["ood_set"]) == ["src", "src"] and list(t["attack"]) == ["none", "smooth"]
    assert t["eps_255"].isna().tolist() == [True, False] and set(FACTORS) <= set(t.columns)
    again = read_table(tmp_path / "07_adversarial")  # both rows kept: the factors are key columns
    assert len(again) == 2 and tables.select(again, attack="smooth", attack_steps=10, eps_255=2.0, expect=1) is not None
    plain = evaluate(["mcm"], bench, n_boot=0).table
    assert plain[FACTORS].isna().all().all() and list(plain["ood_set"]) == ["far", "near"]
    with pytest.raises(ValueError, match="same key"):
        evaluate(["mcm"], bench, n_boot=0, factors={"far": {"ood_set": "near"}})
    with pytest.raises(KeyError, match="temperature"):
        evaluate(["mcm"], bench, n_boot=0, factors={"far": {"temperature": 1.0}})
    with pytest.raises(KeyError, match="not an OOD set"):
        evaluate(["mcm"], bench, n_boot=0, factors={"sun": {"attack": "none"}})
