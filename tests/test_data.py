import hashlib
import tarfile

import numpy as np
import pytest
from PIL import Image

from helpers.data import TINY_IMAGENET_CIFAR10_OVERLAP, collate_skip, get_dataset, import_from_mirror
from helpers.errors import (
    ChecksumMismatchError,
    ClassNameMismatchError,
    CorruptImageError,
    DatasetNotPreparedError,
    MirrorError,
    UnknownDatasetError,
)


def make_imagefolder(root, classes=("a", "b"), per_class=3, size=8):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full((size, size, 3), 40 * ci + 10 * i, dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    return root


def make_mirror(tmp_path, name="toy"):
    src = make_imagefolder(tmp_path / "src" / name)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (mirror / "SHA256SUMS").write_text(f"{digest}  {archive.name}\n")
    return mirror, archive


def test_mirror_import_is_verified_atomic_and_idempotent(tmp_path):
    mirror, archive = make_mirror(tmp_path)
    data = tmp_path / "data"
    out = import_from_mirror(mirror, data=data, progress=False)
    target = out[archive.name]
    assert target == data / "toy" and len(list(target.rglob("*.png"))) == 6
    stamp = (target / "a" / "000.png").stat().st_mtime_ns
    import_from_mirror(mirror, data=data, progress=False)  # second import: nothing rewritten
    assert (target / "a" / "000.png").stat().st_mtime_ns == stamp
    assert not [p for p in data.iterdir() if p.name.startswith(".import-")]  # no temporary folders left
    ds = get_dataset(str(target))
    assert ds.classes == ["a", "b"] and len(ds) == 6


def test_mirror_checksum_mismatch_unpacks_nothing(tmp_path):
    mirror, archive = make_mirror(tmp_path)
    (mirror / "SHA256SUMS").write_text(f"{'0' * 64}  {archive.name}\n")
    data = tmp_path / "data"
    with pytest.raises(ChecksumMismatchError, match="copy toy.tar.gz into the mirror again"):
        import_from_mirror(mirror, data=data, progress=False)
    assert not (data / "toy").exists()


def test_mirror_missing_folder_and_archive(tmp_path, monkeypatch):
    with pytest.raises(MirrorError, match="does not exist.*--mirror"):
        import_from_mirror(tmp_path / "nope", data=tmp_path / "data", progress=False)
    monkeypatch.delenv("CLIPOOD_MIRROR", raising=False)
    with pytest.raises(MirrorError, match="No dataset mirror given"):
        import_from_mirror(None, data=tmp_path / "data", progress=False)
    mirror, archive = make_mirror(tmp_path)
    archive.unlink()
    with pytest.raises(MirrorError, match="listed in SHA256SUMS but missing"):
        import_from_mirror(mirror, data=tmp_path / "data", progress=False)


def test_half_imported_tree_is_redone(tmp_path):
    mirror, archive = make_mirror(tmp_path)
    data = tmp_path / "data"
    (data / "toy" / "a").mkdir(parents=True)  # a previous import killed mid-way: no .source.json marker
    (data / "toy" / "a" / "junk.png").write_bytes(b"")
    import_from_mirror(mirror, data=data, progress=False)
    assert not (data / "toy" / "a" / "junk.png").exists() and (data / "toy" / ".source.json").is_file()


def test_dataset_not_prepared_names_the_fix(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match=r"not prepared.*helpers.data import --mirror.*dtd10.tar.gz"):
        get_dataset("dtd10", data_dir=tmp_path)
    with pytest.raises(DatasetNotPreparedError, match="official source"):
        get_dataset("inaturalist", data_dir=tmp_path)
    with pytest.raises(UnknownDatasetError, match="did you mean"):
        get_dataset("cifar10-tset")


def test_class_name_count_mismatch(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    with pytest.raises(ClassNameMismatchError, match="2 class folders.*3 class names"):
        get_dataset(str(root), class_names=["x", "y", "z"])


def test_corrupt_image_fail_or_skip_keeps_labels_aligned(tmp_path):
    root = make_imagefolder(tmp_path / "ds", per_class=3)
    (root / "a" / "001.png").write_bytes(b"not a png at all")
    ds = get_dataset(str(root))
    with pytest.raises(CorruptImageError, match=r"a/001.png.*on_error='skip'"):
        [ds[i] for i in range(len(ds))]
    ds = get_dataset(str(root), on_error="skip", transform=lambda im: np.asarray(im, dtype=np.float32))
    import torch

    batch = [(None if x is None else torch.from_numpy(x), y, i) for x, y, i in (ds[i] for i in range(len(ds)))]
    images, labels, indices, failed = collate_skip(batch)
    assert failed == [1] and indices.tolist() == [0, 2, 3, 4, 5]
    assert labels.tolist() == [ds.labels[i] for i in indices.tolist()] == [0, 0, 1, 1, 1]


def test_fingerprint_tracks_file_list(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    fp = get_dataset(str(root)).fingerprint()
    assert get_dataset(str(root)).fingerprint() == fp
    make_imagefolder(tmp_path / "ds", per_class=4)  # one more image per class
    assert get_dataset(str(root)).fingerprint() != fp


def test_teaching_benchmark_registry(require_data):
    near = get_dataset("tiny-imagenet-near")
    full = get_dataset("tiny-imagenet-val")
    removed = {w for ws in TINY_IMAGENET_CIFAR10_OVERLAP.values() for w in ws}
    assert len(removed) == 25 and len(near.classes) == 175 and not removed & set(near.classes)
    assert len(near) == 175 * 50 and len(full) == 200 * 50
    assert "tabby" in [full.class_names[full.classes.index(w)] for w in removed]
    probe, pretrain = get_dataset("cifar10-probe"), get_dataset("cifar10-pretrain")
    assert len(probe) == 5000 and len(pretrain) == 45000
    assert not set(probe.paths) & set(pretrain.paths)
    assert np.bincount(probe.labels).tolist() == [500] * 10
    test = get_dataset("cifar10-test", max_per_class=7)
    assert np.bincount(test.labels).tolist() == [7] * 10
    assert get_dataset("cifar10-test", max_per_class=7).paths == test.paths  # seeded subset
    imnet = get_dataset("imagenet-sample")
    assert len(imnet.classes) == 1000 and imnet.class_names[0] == "tench"
