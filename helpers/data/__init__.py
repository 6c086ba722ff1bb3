"""Datasets: registry, mirror import, official-source preparation and ImageFolder loading.

>>> ds = get_dataset("cifar10-test", transform=preprocess)          # a registered name
>>> ds = get_dataset("/path/to/any/imagefolder", transform=preprocess)  # or any ImageFolder directory
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetNotPreparedError, UnknownDatasetError
from ..paths import data_dir as default_data_dir
from .imagefolder import ImageFolderDataset, collate_skip, per_class_choice, scan_imagefolder
from .mirror import import_from_mirror
from .registry import (
    DATASETS,
    PAPER_ID,
    PAPER_OOD,
    TEACHING_ID,
    TEACHING_OOD,
    TINY_IMAGENET_CIFAR10_OVERLAP,
    DatasetSpec,
)

__all__ = [
    "DATASETS", "DatasetSpec", "ImageFolderDataset", "PAPER_ID", "PAPER_OOD", "TEACHING_ID", "TEACHING_OOD",
    "TINY_IMAGENET_CIFAR10_OVERLAP", "collate_skip", "get_dataset", "import_from_mirror", "prompt_name",
    "read_class_names",
]


def prompt_name(name: str) -> str:
    """A class name as it reads in a prompt: first synonym, underscores as spaces."""
    return name.split(",")[0].replace("_", " ").strip()


def read_class_names(spec_kind: str, root: Path, classes: Sequence[str]) -> list[str]:
    """Prompt-ready class names for the class folders ``classes`` of a dataset rooted at ``root``."""
    if spec_kind == "folders":
        return [prompt_name(c) for c in classes]
    if spec_kind == "tsv":
        tsv = root / "classes.tsv"
        if not tsv.is_file():
            raise DatasetNotPreparedError(f"{tsv} is missing: this dataset names its classes in classes.tsv.")
        table = dict(line.split("\t", 1) for line in tsv.read_text().splitlines() if "\t" in line)
        missing = [c for c in classes if c not in table]
        if missing:
            raise DatasetNotPreparedError(f"{tsv} has no name for class folders {missing[:5]}.")
        return [prompt_name(table[c]) for c in classes]
    if spec_kind == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        wnids = sorted(_imagenet_wnids(root))  # the standard class index is the sorted wnid order
        index = {w: i for i, w in enumerate(wnids)}
        if len(wnids) != len(IMAGENET_CLASSNAMES):
            raise DatasetNotPreparedError(f"{root} should hold the 1000 ImageNet-1k class folders, found {len(wnids)}.")
        return [IMAGENET_CLASSNAMES[index[c]] for c in classes]
    raise ValueError(f"unknown class-name source {spec_kind!r}")


def _imagenet_wnids(root: Path) -> list[str]:
    return [d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("n")]


def resolve(name: str) -> DatasetSpec:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.5)
    raise UnknownDatasetError(
        f"Unknown dataset {name!r}{f' (did you mean {close}?)' if close else ''}. Registered: {sorted(DATASETS)}; "
        f"or pass the path of an ImageFolder directory."
    )


def get_dataset(
    name: str | os.PathLike,
    transform: Callable | None = None,
    *,
    max_per_class: int | None = None,
    seed: int = 0,
    on_error: str = "fail",
    class_names: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> ImageFolderDataset:
    """Load a registered dataset by name, or any ImageFolder directory by path.

    ``max_per_class`` keeps a seeded random subset per class (the teaching and smoke profiles use it).
    ``class_names`` overrides the names (one per class folder, sorted folder order).
    ``on_error``: ``"fail"`` raises on an undecodable image, ``"skip"`` skips it and records its path.
    """
    data = Path(data_dir) if data_dir else default_data_dir()
    path = Path(name)
    if str(name) not in DATASETS and (path.is_dir() or os.sep in str(name)):
        if not path.is_dir():
            raise DatasetNotPreparedError(f"ImageFolder directory {path} does not exist.")
        spec, root = DatasetSpec(path.name, str(path), "custom"), path
    else:
        spec = resolve(str(name))
        root = data / spec.root
        if not root.is_dir():
            how = (f"`python -m helpers.data import --mirror DIR` (or `make data MIRROR=DIR`) unpacks it from the "
                   f"mirror archive {spec.archive}" if spec.archive else
                   f"`python -m helpers.data prepare {spec.name} --download-dir DIR` prepares it")
            raise DatasetNotPreparedError(
                f"Dataset {spec.name!r} is not prepared: {root} does not exist. Fix: {how}; "
                f"official source: {spec.source}."
            )
    classes, samples = scan_imagefolder(root)
    if spec.exclude:
        keep = [i for i, c in enumerate(classes) if c not in set(spec.exclude)]
        remap = {old: new for new, old in enumerate(keep)}
        classes = [classes[i] for i in keep]
        samples = [(p, remap[y]) for p, y in samples if y in remap]
    if not samples:
        raise DatasetNotPreparedError(f"Dataset {spec.name!r} at {root} contains no images.")
    names = list(class_names) if class_names is not None else read_class_names(spec.class_names, root, classes)
    ds = ImageFolderDataset(spec.name, root, classes, names, samples, transform, on_error)
    if spec.holdout is not None:
        probe = per_class_choice(ds.labels, spec.holdout.per_class, spec.holdout.seed)
        keep_idx = probe if spec.holdout.part == "probe" else np.setdiff1d(np.arange(len(ds)), probe)
        ds = ds.subset(keep_idx)
    if max_per_class is not None:
        ds = ds.subset(per_class_choice(ds.labels, max_per_class, seed))
    return ds
