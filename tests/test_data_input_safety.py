"""Dataset input that cannot run away (issue 20, items 2 and 6): a single path where a list is expected, symlinks
that leave the dataset or loop, roots that are far too broad, and class folders named by WordNet id."""

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import helpers.data.imagefolder as imagefolder
from helpers.data import get_dataset
from helpers.data.imagefolder import scan_imagefolder
from helpers.errors import ClipOODError, UsageError


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


def tree(root: Path, classes=("cat", "dog", "fox"), per_class=3) -> Path:
    for ci, c in enumerate(classes):
        for i in range(per_class):
            png(root / c / f"{i}.png", 10 * ci + i)
    return root


def expected(root: Path) -> list[tuple[str, int]]:
    """The (path, label) list of a tree without links, computed with os.walk independently of the scanner."""
    out = []
    for label, c in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for dirpath, _, files in sorted(os.walk(root / c)):
            out += [(os.path.relpath(os.path.join(dirpath, f), root), label) for f in sorted(files)]
    return out


# ---- item 2: a single path where a list is expected -------------------------------------------------------------

def _stub_model():
    from helpers.models.factory import LoadedModel

    return LoadedModel(torch.nn.Identity(), None, None, "stub", "stub", None, None, torch.device("cpu"), "fp32",
                       "bicubic")


def test_a_single_path_where_a_list_is_expected_loads_one_dataset(tmp_path, monkeypatch):
    import helpers.benchmark as benchmark

    monkeypatch.setattr(benchmark, "extract_features", lambda loaded, ds, **kw: ds)  # no model run: the datasets
    id_root, ood_root = tree(tmp_path / "id"), tree(tmp_path / "my_ood", classes=("a", "b"), per_class=2)
    bench = benchmark.load_benchmark(_stub_model(), str(id_root), str(ood_root), workers=0)
    assert list(bench.ood) == ["my_ood"] and len(bench.ood["my_ood"]) == 4
    assert bench.datasets["my_ood"].root == ood_root
    bench = benchmark.load_benchmark(_stub_model(), str(id_root), ood_root, workers=0)  # a Path too
    assert list(bench.ood) == ["my_ood"]


@pytest.mark.parametrize("value", ["/", ["/", "d", "a", "t", "a"], 3, None, {"sun": "/data/sun"}])
def test_characters_and_non_lists_are_refused_before_the_model_loads(value):
    from helpers.benchmark import load_benchmark

    # a model name that does not exist: the dataset list must be refused before the model is looked up
    with pytest.raises(UsageError) as err:
        load_benchmark("no-such-arch/no-such-tag", "cifar10-test", value, workers=0)
    assert "--set ood_datasets='[\"/data/a\"]'" in str(err.value) and repr(value)[:20] in str(err.value)


def test_evaluate_family_takes_a_single_folder_too(tmp_path, monkeypatch):
    import helpers.families as families

    seen = []
    monkeypatch.setattr(families, "score_model",
                        lambda loaded, train, id_test, ood, *a, **k: seen.append(ood) or SimpleNamespace(table=None))
    member = type("M", (), {"load": lambda self, device: _stub_model()})()
    monkeypatch.setattr(families.pd, "concat", lambda tables, **k: tables)
    real = families.get_dataset  # fail fast instead of scanning "/" when a path is iterated character by character
    monkeypatch.setattr(families, "get_dataset", lambda n, **k: real(n, **k) if len(str(n)) > 1 else pytest.fail(
        f"get_dataset({n!r}): ood_datasets was iterated character by character"))
    root = tree(tmp_path / "ds")
    families.evaluate_family([member], [], id_dataset=str(root), ood_datasets=str(tree(tmp_path / "ood")),
                             probe_dataset=str(root))
    assert [[d.name for d in ood] for ood in seen] == [["ood"]]


# ---- item 2: symlinks ---------------------------------------------------------------------------------------------

def _within(seconds: float, fn, *args):
    """``fn(*args)``, failing the test when it has not returned after ``seconds`` (a daemon thread: a runaway scan
    is abandoned, not waited for)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive() or not result:
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s (or raised)")
    return result[0]


def test_a_symlink_loop_terminates_and_lists_each_image_once(tmp_path):
    root = tree(tmp_path / "ds", classes=("cat", "dog"), per_class=2)
    png(root / "cat" / "sub" / "deep.png")
    (root / "cat" / "sub" / "loop").symlink_to(root / "cat")  # back up to the class folder
    (root / "cat" / "self").symlink_to(root / "cat" / "sub")  # a second way into a folder already listed
    (root / "dog" / "up").symlink_to(root)  # to the dataset root: would list the cat images under dog
    (root / "dog" / "cats").symlink_to(root / "cat")  # into another class folder
    classes, samples = _within(20, scan_imagefolder, root)
    assert classes == ["cat", "dog"]
    assert samples == [("cat/0.png", 0), ("cat/1.png", 0), (os.path.join("cat", "sub", "deep.png"), 0),
                       ("dog/0.png", 1), ("dog/1.png", 1)]


def test_symlinks_to_folders_outside_the_root_are_not_followed(tmp_path):
    root = tree(tmp_path / "ds", classes=("cat", "dog"), per_class=2)
    outside = tree(tmp_path / "elsewhere", classes=("x",), per_class=3)
    (root / "cat" / "more").symlink_to(outside / "x")
    (root / "dog" / "everything").symlink_to(tmp_path)
    pool = tree(root / ".pool", classes=("p",), per_class=1)  # inside the root: followed
    (root / "dog" / "pooled").symlink_to(pool / "p")
    (root / "dog" / "linked.png").symlink_to(outside / "x" / "0.png")  # a symlinked *file* is an image as any other
    ds = get_dataset(str(root))
    assert ds.paths == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/linked.png",
                        os.path.join("dog", "pooled", "0.png")]
    assert list(ds.labels) == [0, 0, 1, 1, 1, 1]


def test_a_tree_without_links_scans_as_os_walk_lists_it(tmp_path):
    root = tree(tmp_path / "ds", classes=("b", "a", "c"), per_class=2)
    png(root / "a" / "z" / "q.png")
    png(root / "a" / "m" / "n" / "r.png")
    png(root / "c" / "0" / "s.png")
    assert scan_imagefolder(root)[1] == expected(root)


# ---- item 2: roots that are far too broad -------------------------------------------------------------------------

def _no_listing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("listed a folder")

    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(os, "walk", refuse)
    monkeypatch.setattr(Path, "iterdir", refuse)


def test_the_filesystem_root_is_refused_without_listing_it(monkeypatch):
    with monkeypatch.context() as m:
        _no_listing(m)
        with pytest.raises(ClipOODError) as err:
            get_dataset("/")
    assert "filesystem root" in str(err.value) and "--set ood_datasets='[" in str(err.value)


def test_the_home_folder_is_refused_without_listing_it(tmp_path, monkeypatch):
    home = tree(tmp_path / "home", classes=("Documents", "Pictures"), per_class=1)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    monkeypatch.setenv("HOME", str(home))
    for source in (str(home), "~", str(home / "Pictures" / "..")):
        with monkeypatch.context() as m:
            _no_listing(m)
            with pytest.raises(ClipOODError, match="is your home folder") as err:
                get_dataset(source)
        assert "<folder>/<class>/<image>" in str(err.value)
    assert len(get_dataset(str(home / "Pictures"))) == 1  # a folder below it is fine


def test_a_root_above_the_file_cap_is_refused_with_the_count(tmp_path, monkeypatch):
    root = tree(tmp_path / "ds", classes=("a", "b", "c"), per_class=3)
    monkeypatch.setenv("CLIPOOD_MAX_DATASET_FILES", "5")
    with pytest.raises(ClipOODError) as err:
        get_dataset(str(root))
    # counted per folder and stopped as soon as the cap was passed: a (3) + b (3) = 6, class c never listed
    assert f"{root} holds more than 5 files (stopped counting at 6)" in str(err.value)
    assert "CLIPOOD_MAX_DATASET_FILES" in str(err.value) and "max_files=" in str(err.value)
    assert len(get_dataset(str(root), max_files=9)) == 9  # the argument wins over the environment
    with pytest.raises(ClipOODError, match="more than 8 files"):
        get_dataset(str(root), max_files=8)


def test_the_default_cap_admits_imagenet_train_and_a_bad_setting_is_explained(monkeypatch):
    monkeypatch.delenv("CLIPOOD_MAX_DATASET_FILES", raising=False)
    assert imagefolder.max_dataset_files() >= 1_281_167  # ImageNet-1k train
    monkeypatch.setenv("CLIPOOD_MAX_DATASET_FILES", "lots")
    with pytest.raises(UsageError, match="CLIPOOD_MAX_DATASET_FILES='lots' is not a positive number"):
        imagefolder.max_dataset_files()
    monkeypatch.setenv("CLIPOOD_MAX_DATASET_FILES", "3_000_000")
    assert imagefolder.max_dataset_files() == 3_000_000


def test_a_large_scan_shows_a_progress_bar_and_a_small_one_is_silent(tmp_path, monkeypatch, capsys):
    root = tree(tmp_path / "ds", classes=("a", "b", "c"), per_class=2)
    scan_imagefolder(root)
    assert "scanning" not in capsys.readouterr().err
    monkeypatch.setattr(imagefolder, "PROGRESS_AFTER_FILES", 3)
    scan_imagefolder(root)
    err = capsys.readouterr().err
    assert f"scanning {root}" in err and "6 files" in err  # all six files counted on the bar
    scan_imagefolder(root, progress=False)
    assert "scanning" not in capsys.readouterr().err


# ---- item 6: class folders named by WordNet id --------------------------------------------------------------------

def test_imagenet_wnid_folders_get_imagenet_class_names(tmp_path):
    root = tree(tmp_path / "ds", classes=("n01443537", "n01440764", "n15075141"), per_class=1)
    ds = get_dataset(str(root))
    assert ds.classes == ["n01440764", "n01443537", "n15075141"]
    assert ds.class_names == ["tench", "goldfish", "toilet paper"]  # open_clip's names, class 0, 1 and 999


def test_the_imagenet_names_agree_with_the_registered_imagenet_sample(require_data):
    from helpers.data.wnids import imagenet_names

    # the mirror's 1000 class folders: the same wnids; and named as the registered "imagenet" class-name source
    # (open_clip's names by sorted folder order) names them
    sample = get_dataset("imagenet-sample")
    tsv = dict(line.split("\t", 1) for line in (sample.root / "classes.tsv").read_text().splitlines())
    assert sorted(imagenet_names()) == sorted(tsv) == sample.classes
    assert [imagenet_names()[c] for c in sample.classes] == sample.class_names


def test_wordnet_names_a_wnid_outside_imagenet_1k(tmp_path):
    from helpers.data.wnids import debian_lemma
    from helpers.words import wordnet_dir

    data_noun = wordnet_dir() / "data.noun"
    if not data_noun.is_file():
        pytest.skip(f"{data_noun} is missing (apt-get install -y wordnet-base)")
    # independently: the line of data.noun whose first field is the wnid's number, fifth field its first lemma
    with open(data_noun) as f:
        line = next(x for x in f if x.startswith("02084071 "))
    assert debian_lemma("n02084071") == line.split()[4] == "dog"
    assert debian_lemma("n02084072") is None  # not a synset's offset
    root = tree(tmp_path / "ds", classes=("n00004475", "n01440764", "n02084071"), per_class=1)
    assert get_dataset(str(root)).class_names == ["organism", "tench", "dog"]


def test_unknown_wnids_are_refused_and_classes_tsv_or_class_names_fix_it(tmp_path):
    root = tree(tmp_path / "ds", classes=("n01440764", "n00000007"), per_class=1)
    with pytest.raises(ClipOODError) as err:
        get_dataset(str(root))
    message = str(err.value)
    assert "n00000007" in message and "n01440764" not in message.split("(tried")[0]
    assert "classes.tsv" in message and "class_names=" in message
    assert get_dataset(str(root), class_names=["thing", "tench"]).class_names == ["thing", "tench"]
    (root / "classes.tsv").write_text("n00000007\tmystery_thing, other\nn01440764\tmy tench\n")
    assert get_dataset(str(root)).class_names == ["mystery thing", "my tench"]  # the user's own names first


def test_folders_that_are_not_all_wnids_keep_their_names(tmp_path):
    root = tree(tmp_path / "ds", classes=("n01440764", "n0144076", "snake_eel"), per_class=1)
    assert get_dataset(str(root)).class_names == ["n0144076", "n01440764", "snake eel"]
