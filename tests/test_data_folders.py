"""One's own ImageFolder datasets: names, class subsets, ``~``, relative-path errors, splits, scan-time reports."""

import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image

import helpers.data as data_mod
from helpers.data import DatasetSpec, get_dataset
from helpers.data.imagefolder import scan_imagefolder
from helpers.errors import (
    ClipOODError,
    DatasetNotPreparedError,
    EmptyClassError,
    UnknownClassError,
    UnknownDatasetError,
)


def make_folder(root, classes=("cat", "dog", "fox"), per_class=4):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((4, 4, 3), 30 * ci + i, dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def test_name_defaults_to_basename_and_can_be_given(tmp_path):
    root = make_folder(tmp_path / "two" / "val")
    assert get_dataset(str(root)).name == "val"
    ds = get_dataset(str(root), name="pets-val")
    assert ds.name == "pets-val" and len(ds) == 12
    assert get_dataset(str(root) + "/").name == "val"


def test_classes_and_exclude_keep_sorted_labels(tmp_path):
    root = make_folder(tmp_path / "ds")
    only = get_dataset(str(root), classes=["fox", "cat"])
    assert only.classes == ["cat", "fox"] and only.class_names == ["cat", "fox"]
    assert only.labels.tolist() == [0] * 4 + [1] * 4 and all(p.startswith(("cat/", "fox/")) for p in only.paths)
    drop = get_dataset(str(root), exclude=["dog"])
    assert drop.paths == only.paths and drop.labels.tolist() == only.labels.tolist()
    both = get_dataset(str(root), classes=["cat", "dog"], exclude=["dog"])
    assert both.classes == ["cat"] and len(both) == 4
    with pytest.raises(UnknownClassError, match=r"no class folder 'dgo' \(did you mean 'dog'\?\).*cat, dog, fox"):
        get_dataset(str(root), classes=["dgo"])
    with pytest.raises(UnknownClassError, match="leave no class folder"):
        get_dataset(str(root), exclude=["cat", "dog", "fox"])
    with pytest.raises(TypeError, match="list of class folder names"):
        get_dataset(str(root), classes="cat")


def test_exclude_leaves_an_empty_folder_out(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "empty").mkdir()
    ds = get_dataset(str(root), exclude=["empty"])
    assert ds.classes == ["cat", "dog", "fox"] and len(ds) == 12


def test_registered_exclude_still_applies(tmp_path, monkeypatch):
    make_folder(tmp_path / "data" / "toy")
    spec = DatasetSpec("toy-near", "toy", "ood", exclude=("dog",))
    monkeypatch.setitem(data_mod.DATASETS, "toy-near", spec)
    ds = get_dataset("toy-near", data_dir=tmp_path / "data", exclude=["fox"])
    assert ds.classes == ["cat"] and ds.name == "toy-near" and len(ds) == 4


def test_class_subset_of_a_holdout_split_keeps_its_images(tmp_path, monkeypatch):
    from helpers.data.registry import Holdout

    make_folder(tmp_path / "data" / "toy", per_class=6)
    for part in ("probe", "pretrain"):
        monkeypatch.setitem(data_mod.DATASETS, f"toy-{part}",
                            DatasetSpec(f"toy-{part}", "toy", "train", holdout=Holdout(part, 2, seed=5)))
    full = get_dataset("toy-probe", data_dir=tmp_path / "data")
    sub = get_dataset("toy-probe", data_dir=tmp_path / "data", classes=["fox"], class_names=["red fox"])
    assert sub.classes == ["fox"] and sub.class_names == ["red fox"] and sub.labels.tolist() == [0, 0]
    assert sub.paths == [p for p in full.paths if p.startswith("fox/")]  # the same held-out images
    rest = get_dataset("toy-pretrain", data_dir=tmp_path / "data", exclude=["cat"])
    assert not set(rest.paths) & set(full.paths) and len(rest) == 8


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_folder(tmp_path / "mydata" / "ood")
    ds = get_dataset("~/mydata/ood")
    assert ds.root == tmp_path / "mydata" / "ood" and len(ds) == 12


def test_relative_path_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotPreparedError) as info:
        get_dataset("data/mine/val")
    msg = str(info.value)
    assert "resolved against the current working directory" in msg and "notebooks/" in msg
    assert str(tmp_path.resolve() / "data" / "mine" / "val") in msg
    assert ".." not in msg.replace("'../'", "")
    with pytest.raises(DatasetNotPreparedError, match=f"{tmp_path}/nope does not exist"):
        get_dataset(str(tmp_path / "nope"))
    with pytest.raises(UnknownDatasetError, match="resolved against the current working directory.*notebooks/"):
        get_dataset("myfolder")


def test_split_per_class_is_seeded_disjoint_and_complete(tmp_path):
    from helpers.data import split_per_class

    ds = get_dataset(str(make_folder(tmp_path / "ds", per_class=6)))
    part, rest = split_per_class(ds, per_class=2, seed=3)
    assert np.bincount(part.labels).tolist() == [2, 2, 2] and np.bincount(rest.labels).tolist() == [4, 4, 4]
    assert sorted(part.paths + rest.paths) == sorted(ds.paths) and not set(part.paths) & set(rest.paths)
    again, _ = split_per_class(ds, per_class=2, seed=3)
    other, _ = split_per_class(ds, per_class=2, seed=4)
    assert again.paths == part.paths and other.paths != part.paths
    assert part.paths == sorted(part.paths, key=ds.paths.index)  # dataset order kept
    assert part.name != rest.name and part.name.startswith("ds") and type(part) is type(ds)
    named, _ = split_per_class(ds, 1, 0, names=("shots", None))
    assert named.name == "shots"
    assert "split_per_class" in data_mod.__doc__


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "empty_class").mkdir()
    (root / "also_empty").mkdir()
    (root / "also_empty" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyClassError, match=r"2 class folder\(s\).*hold no image: also_empty, empty_class.*exclude="):
        get_dataset(str(root))
    assert issubclass(EmptyClassError, ClipOODError) and issubclass(EmptyClassError, ValueError)


def test_non_image_files_are_reported_by_name(tmp_path):
    root = make_folder(tmp_path / "ds")
    for i in range(7):
        (root / "cat" / f"note{i}.txt").write_text("x")
    (root / "dog" / ".DS_Store").write_bytes(b"")  # hidden files are not worth a word
    with pytest.warns(UserWarning, match=r"skipped 7 file\(s\) that are not images: cat/note0.txt, .*cat/note4.txt, \.\.\.") as rec:
        ds = get_dataset(str(root))
    assert len(ds) == 12 and "note5" not in str(rec[0].message)
    make_folder(tmp_path / "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_dataset(str(tmp_path / "clean"))


def test_scan_order_is_unchanged(tmp_path):
    """The sample order determines cache keys: sorted by class folder, then walk order, then file name."""
    root = make_folder(tmp_path / "ds", classes=("b", "a"), per_class=2)
    (root / "a" / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(root / "a" / "sub" / "000.jpg")
    Image.new("RGB", (2, 2)).save(root / "a" / "Z.PNG")
    classes, samples = scan_imagefolder(root)
    assert classes == ["a", "b"]
    assert samples == [("a/000.png", 0), ("a/001.png", 0), ("a/Z.PNG", 0), ("a/sub/000.jpg", 0),
                       ("b/000.png", 1), ("b/001.png", 1)]


def test_datasetspec_has_no_aliases():
    assert "aliases" not in {f.name for f in dataclasses.fields(DatasetSpec)}
