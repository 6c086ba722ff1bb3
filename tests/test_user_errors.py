"""What a user sees when something goes wrong: a checkpoint loaded by path, an error in a DataLoader worker, offline
weights, a list of only custom detectors (issue 20, items 5, 9 and 11)."""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers.errors import CorruptImageError, WeightsUnavailableError


# --------------------------------------------------------------------- item 5: a pocket checkpoint loaded by path
def _copied_checkpoint(smoke_model, tmp_path):
    """The smoke pocket CLIP's checkpoint folder copied elsewhere: (its architecture, the copied file)."""
    from pathlib import Path

    folder = tmp_path / "copied"
    shutil.copytree(Path(smoke_model.pretrained).parent, folder)
    return smoke_model.arch, folder / "open_clip_model.safetensors"


def test_checkpoint_loaded_by_path_warns_about_classes_it_never_saw(smoke_model, tmp_path):
    from helpers.benchmark import warn_unknown_classes
    from helpers.models import load_model

    arch, ckpt = _copied_checkpoint(smoke_model, tmp_path)
    seen = smoke_model.info["class_names"]
    doubled = str(ckpt.parent) + "//" + ckpt.name
    for spec, pretrained in ((arch, str(ckpt)), (arch, doubled), (f"{arch}/{doubled}", None)):
        loaded = load_model(spec, pretrained)
        assert loaded.info["class_names"] == seen  # train.json beside the copied file
        with pytest.warns(UserWarning, match=r"1 of the 3 ID classes are unknown .*\(tench\)"):
            assert warn_unknown_classes(loaded, [seen[0], seen[1], "tench"]) == ["tench"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert warn_unknown_classes(loaded, seen[:3]) == []


def test_checkpoint_without_train_json_says_it_cannot_check(smoke_model, tmp_path):
    from helpers.benchmark import warn_unknown_classes
    from helpers.models import load_model

    arch, ckpt = _copied_checkpoint(smoke_model, tmp_path)
    (ckpt.parent / "train.json").unlink()
    loaded = load_model(arch, str(ckpt.parent) + "//" + ckpt.name)
    with pytest.warns(UserWarning, match=r"open_clip_model.safetensors has no train.json beside it: cannot check "
                                         r"whether it saw the ID classes \(cat, tench\).*Fix: copy train.json"):
        assert warn_unknown_classes(loaded, ["cat", "tench"]) == []


def test_published_architecture_from_a_file_needs_no_train_json(tmp_path):
    from helpers.models.factory import checkpoint_info

    (tmp_path / "w.safetensors").write_bytes(b"")
    assert checkpoint_info("ViT-B-32", str(tmp_path / "w.safetensors")) == {}
    assert checkpoint_info("pocket-vit-xs", str(tmp_path / "w.safetensors")) == {
        "train_info_missing": str(tmp_path / "train.json")}
    (tmp_path / "train.json").write_text('{"class_names": ["cat"]}')
    assert checkpoint_info("pocket-vit-xs", str(tmp_path) + "//./w.safetensors") == {"class_names": ["cat"]}


# ------------------------------------------------------------------- item 11: errors in DataLoader workers, offline
def _folder_with_one_corrupt_image(root):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


def test_worker_error_arrives_with_its_own_message(tmp_path, tmp_cache, capfd):
    from helpers.data import get_dataset
    from helpers.features import extract_features
    from helpers.models import load_model

    m = load_model("pocket-vit-xs", "random")
    ds = get_dataset(str(_folder_with_one_corrupt_image(tmp_path / "imgs")), on_error="fail")
    capfd.readouterr()
    with pytest.raises(CorruptImageError) as e:
        extract_features(m, ds, num_workers=1, batch_size=2, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"Cannot decode image {tmp_path / 'imgs' / 'a' / 'broken.png'}") and len(msg) < 600
    assert "Traceback" not in msg and "worker process" not in msg and "on_error='skip'" in msg
    assert "worker process 0" in str(e.value.__cause__)  # chained to torch's re-raised exception
    # the failed iterator's workers were stopped: a second extraction (forking new workers) prints no noise
    (tmp_path / "imgs" / "a" / "broken.png").unlink()
    extract_features(m, get_dataset(str(tmp_path / "imgs")), num_workers=2, batch_size=2, progress=False)
    del e
    import gc

    gc.collect()
    err = capfd.readouterr().err
    assert "__del__" not in err and "Exception ignored" not in err


def test_worker_error_keeps_other_errors_as_they_are():
    from helpers.errors import NonFiniteError
    from helpers.features import worker_error

    text = ("Caught CorruptImageError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
            "  File \"x.py\", line 1, in f\nOSError: cause\n\nThe above exception was the direct cause of the "
            "following exception:\n\nTraceback (most recent call last):\n  File \"y.py\", line 2, in g\n"
            "helpers.errors.CorruptImageError: Cannot decode image a.png\nsecond line.\n")
    clean = worker_error(CorruptImageError(text))
    assert type(clean) is CorruptImageError and str(clean) == "Cannot decode image a.png\nsecond line."
    assert worker_error(CorruptImageError("Cannot decode image a.png")) is None  # raised in the main process
    assert worker_error(RuntimeError(text)) is None  # not a package error: left as torch raised it
    assert worker_error(NonFiniteError(text)) is None  # its name is not in the traceback


def test_offline_pretrained_weights_raise_the_clean_error_only(monkeypatch, caplog, capfd):
    from helpers.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capfd.readouterr()
    with caplog.at_level(logging.INFO), pytest.raises(WeightsUnavailableError, match=r"ViT-B-32/openai .*Fix: "):
        load_model("ViT-B-32/openai")
    out = capfd.readouterr()
    assert not [r for r in caplog.records if "Failed to download" in r.getMessage()]
    assert "Failed to download" not in out.err + out.out
    assert not [f for f in logging.getLogger().filters if type(f).__name__ == "_DownloadErrorFilter"]  # removed


# ------------------------------------------------------------------------- item 9: only custom detectors
MY_DETECTORS = '''
from helpers.detectors.mcm import ZeroShotDetector


class MyDetector(ZeroShotDetector):
    """The largest cosine to a class prompt (notebook 02's exercise 6: no name, no title)."""

    def score(self, image, **_):
        return self.cosines(image).max(dim=1).values
'''


def _custom_long_table(label="MyDetector (T=1)", ood=("dtd10", "mnist")):
    import pandas as pd

    from helpers.evaluation import COLUMNS

    rng = np.random.default_rng(1)
    table = pd.DataFrame([{"step": "main", "detector": "", "detector_label": label, "params": "{}", "ood_set": o,
                           "auroc": a, "fpr95": 100 - a, "aupr_in": a, "aupr_out": a, "id_acc": 40.0, "n_id": 50,
                           "n_ood": 40} for o, a in zip(ood, (61.0, 83.0))]).reindex(columns=COLUMNS)
    scores = {label: {"cifar10-test": rng.normal(1, 1, 50), **{o: rng.normal(0, 1, 40) for o in ood}}}
    return table, scores


def test_figures_of_a_run_with_only_a_custom_detector(capsys):
    import matplotlib.pyplot as plt

    from helpers import plots, tables

    table, scores = _custom_long_table()
    wanted = ["MCM (T=1)", "GL-MCM (T=1, λ=0.5)", "MCM (T=1)"]
    assert plots.pick(wanted, ["MCM (T=1)", "x"], "figure") == ["MCM (T=1)"]  # built-ins run: only those, once
    assert capsys.readouterr().out == ""
    show = plots.pick(wanted, scores, "score figures")
    assert show == ["MyDetector (T=1)"]
    assert "none of ['MCM (T=1)', 'GL-MCM (T=1, λ=0.5)'] is among this run's detectors" in capsys.readouterr().out
    fig = plots.score_histograms(scores, show, "cifar10-test", ["dtd10", "mnist"], table)
    assert [ax.get_title() for ax in fig.axes] == ["dtd10 · AUROC 61.0", "mnist · AUROC 83.0"]
    roc = plots.roc_curves(scores, show, "cifar10-test", ["dtd10", "mnist"])
    assert [line.get_label() for line in roc.axes[0].lines][:1] == ["MyDetector (T=1)"]
    empty = plots.score_histograms(scores, [], "cifar10-test", ["dtd10"])  # nothing asked: a note, not a crash
    assert "no detector to show" in empty.axes[0].texts[0].get_text()
    bars = plots.auroc_bars(table)
    assert sorted(round(p.get_height(), 1) for p in bars.axes[0].patches if p.get_height() > 0) == [61.0, 83.0]
    wide = tables.wide(table, "auroc")
    assert wide.loc["MyDetector (T=1)", "average"] == pytest.approx(72.0)
    plt.close("all")


def test_a_custom_detector_class_without_a_name_gets_its_class_name(tmp_path, monkeypatch):
    from helpers.detectors import get

    (tmp_path / "my_detectors.py").write_text(MY_DETECTORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = get("my_detectors:MyDetector")
    assert d.label == "MyDetector (T=1)" and get({"name": "my_detectors:MyDetector", "T": 0.5}).label == \
        "MyDetector (T=0.5)"


@pytest.mark.notebook
def test_notebook_02_runs_with_only_a_custom_detector(tmp_path, monkeypatch, smoke_model):
    import json
    import os

    import pandas as pd

    from helpers.run import main

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_detectors.py").write_text(MY_DETECTORS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path / "mods"),
                                                                   os.environ.get("PYTHONPATH")])))
    out = tmp_path / "out"
    spec = json.dumps(["my_detectors:MyDetector"])
    assert main(["--profile", "smoke", "--only", "02", "--out", str(out), "--set", f"detectors={spec}"]) == 0
    res = next(out.rglob("02_zero_shot/scores.csv")).parent
    main_rows = pd.read_csv(res / "scores.csv").query("step == 'main'")
    assert set(main_rows["detector_label"]) == {"MyDetector (T=1)"} and len(main_rows) == 4
    assert list(pd.read_csv(res / "headline.csv")["detector_label"]) == ["MyDetector (T=1)"]
    figures = {p.name for p in out.rglob("02_zero_shot/*.png")}
    assert {"score_histograms.png", "roc_curves.png"} <= figures


def test_a_checkpoint_cut_short_names_the_file_and_the_fix(tmp_path):
    """A local checkpoint that does not read (cut short in a copy) is a DamagedCheckpointError naming the file,
    not safetensors' or torch's own error."""
    from safetensors.torch import save_file

    from helpers.errors import DamagedCheckpointError
    from helpers.models import load_model

    m = load_model("pocket-vit-xs", "random")
    whole = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.model.state_dict().items()}, str(whole))
    for name, data in (("cut.safetensors", whole.read_bytes()[: whole.stat().st_size // 2]),
                       ("cut.pt", b"PK\x03\x04" + b"\0" * 64)):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(DamagedCheckpointError, match=rf"Checkpoint {bad} \({len(data):,} bytes\) for "
                                                         r"'pocket-vit-xs' does not read: .*Fix: copy the file again"):
            load_model("pocket-vit-xs", str(bad))
