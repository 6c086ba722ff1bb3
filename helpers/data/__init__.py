"""Datasets: registry, mirror import, official-source preparation and ImageFolder loading.

>>> ds = get_dataset("cifar10-test", transform=preprocess)          # a registered name
>>> ds = get_dataset("/path/to/any/imagefolder", transform=preprocess)  # or any ImageFolder directory

Your own folders (``<root>/<class>/<image>``; a folder without class sub-folders is one class):

>>> ood = get_dataset("~/data/val", name="my-ood")                  # ``~`` expanded; named "val" by default
>>> pets = get_dataset("/data/oxford-pets", classes=["cat", "dog"])  # keep only these class folders
>>> rest = get_dataset("/data/oxford-pets", exclude=["cat"])         # or drop some
>>> train, test = split_per_class(pets, per_class=16, seed=0)       # 16 images per class (seeded) vs the rest

Relative paths are resolved against the current working directory; notebooks run in ``notebooks/``, so pass
absolute paths there. An empty class folder is an error (:class:`~helpers.errors.EmptyClassError`) and files
that are not images are skipped with a warning naming them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetNotPreparedError, UnknownClassError, UnknownDatasetError, UsageError
from ..paths import data_dir as default_data_dir
from .imagefolder import (
    DatasetRootTooBroadError,
    ImageFolderDataset,
    check_root,
    class_folders,
    collate_skip,
    per_class_choice,
    scan_imagefolder,
)
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
from .wnids import all_wnids, wnid_names

__all__ = [
    "DATASETS", "DatasetRootTooBroadError", "DatasetSpec", "ImageFolderDataset", "PAPER_ID", "PAPER_OOD", "TEACHING_ID", "TEACHING_OOD",
    "TINY_IMAGENET_CIFAR10_OVERLAP", "as_dataset_list", "collate_skip", "get_dataset", "import_from_mirror", "prepared", "prompt_name",
    "read_class_names", "split_per_class",
]


def prompt_name(name: str) -> str:
    """A class name as it reads in a prompt: first synonym, underscores as spaces."""
    return name.split(",")[0].replace("_", " ").strip()


def read_class_names(spec_kind: str, root: Path, classes: Sequence[str]) -> list[str]:
    """Prompt-ready class names for the class folders ``classes`` of a dataset rooted at ``root``."""
    if spec_kind == "folders":
        if all_wnids(classes):  # ImageNet-style folders (n01440764): named through ImageNet / WordNet
            return wnid_names(root, classes, prompt_name)
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


def as_dataset_list(value, name: str = "ood_datasets") -> list:
    """``value`` as a list of datasets (registered names, folders or :class:`ImageFolderDataset` objects).

    A single name, path or dataset is a list of one, so that ``ood_datasets=/data/my_ood`` (no brackets) loads
    that one folder instead of iterating its characters. A one-character name (what iterating a string yields;
    ``/`` would scan the whole machine) and anything that is neither a name, a path, a dataset nor a list of them
    raise :class:`~helpers.errors.UsageError` showing the syntax that works.
    """
    one = (str, os.PathLike, ImageFolderDataset)
    items = [value] if isinstance(value, one) else list(value) if isinstance(value, (list, tuple)) else None
    bad = [v for v in items or [] if not isinstance(v, one)
           or not isinstance(v, ImageFolderDataset) and len(os.fspath(v)) < 2]
    if items is None or bad:
        short = [v for v in bad if isinstance(v, (str, os.PathLike))]
        why = (f"got a value of type {type(value).__name__}" if items is None else
               f"got entries that are not names or folders: {', '.join(repr(v) for v in bad[:5])}" if not short else
               f"got one-character names {', '.join(repr(v) for v in short[:5])}{', ...' if len(short) > 5 else ''}"
               f": a single path given without brackets was split into characters on the way")
        raise UsageError(
            f"{name} must be a list of dataset names or ImageFolder folders ({name}={value!r:.200}), {why}. Fix: "
            f"write a list, e.g. --set {name}='[\"/data/a\"]' (several: --set {name}='[\"/data/a\", \"/data/b\"]'"
            f"; the same list as a notebook parameter).")
    return items


def prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the registered dataset ``name`` is present in the data folder."""
    return (Path(data_dir) if data_dir else default_data_dir()).joinpath(resolve(name).root).is_dir()


def resolve(name: str) -> DatasetSpec:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.5)
    raise UnknownDatasetError(
        f"Unknown dataset {name!r}{f' (did you mean {close}?)' if close else ''}. Registered: {sorted(DATASETS)}; "
        f"or pass the path of an ImageFolder directory (a relative path is resolved against the current working "
        f"directory, {Path.cwd()}; notebooks run in notebooks/)."
    )


def _folder_path(name: str | os.PathLike) -> Path:
    """The ImageFolder directory ``name`` names, ``~`` expanded; a clear error when it does not exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute():
        raise DatasetNotPreparedError(f"ImageFolder directory {path} does not exist. Fix: check the path.")
    cwd = Path.cwd()
    raise DatasetNotPreparedError(
        f"ImageFolder directory {str(name)!r} does not exist: relative paths are resolved against the current "
        f"working directory ({cwd}), so it looked for {(cwd / path).resolve()}. Notebooks run in notebooks/ "
        f"(Jupyter and the runner start them there), so a path relative to the repository root needs '../' "
        f"there. Fix: pass an absolute path."
    )


def _class_filter(root: Path, name: str, classes: Sequence[str] | None, exclude: Sequence[str]) -> set[str]:
    """The class folders to leave out so that only ``classes`` (all if None) minus ``exclude`` remain."""
    if isinstance(classes, str) or isinstance(exclude, str):
        raise TypeError("classes= and exclude= take a list of class folder names, not a string")
    available = class_folders(root) or [root.name]
    asked = list(classes or []) + list(exclude)
    unknown = [c for c in asked if c not in available]
    if unknown:
        hints = {c: difflib.get_close_matches(c, available, n=1, cutoff=0.6) for c in unknown}
        said = ", ".join(f"{c!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for c, h in hints.items())
        raise UnknownClassError(
            f"Dataset {name!r} at {root} has no class folder {said}. Its class folders: "
            f"{', '.join(available[:20])}{', ...' if len(available) > 20 else ''}."
        )
    drop = set(exclude) | (set(available) - set(classes) if classes is not None else set())
    if not set(available) - drop:
        raise UnknownClassError(f"classes={list(classes or [])} and exclude={list(exclude)} leave no class "
                                  f"folder of {root}. Fix: keep at least one class.")
    return drop


def _spec_and_root(text: str, data: Path) -> tuple[DatasetSpec, Path]:
    """The spec and root folder of a registered name or of an ImageFolder path (``/`` and home refused)."""
    if text not in DATASETS and (Path(text).is_dir() or os.sep in text or text.startswith("~")
                                 or (os.altsep is not None and os.altsep in text)):
        root = _folder_path(text)
        check_root(root)  # "/" or the home folder: refused before anything is listed
        return DatasetSpec(root.name or root.resolve().name, str(root), "custom"), root
    spec = resolve(text)
    root = data / spec.root
    if not root.is_dir():
        how = (f"`python -m helpers.data import --mirror DIR` (or `make data MIRROR=DIR`) unpacks it from the "
               f"mirror archive {spec.archive}" if spec.archive else
               f"`python -m helpers.data prepare {spec.name} --download-dir DIR` prepares it")
        raise DatasetNotPreparedError(
            f"Dataset {spec.name!r} is not prepared: {root} does not exist. Fix: {how}; "
            f"official source: {spec.source}."
        )
    return spec, root


def get_dataset(
    source: str | os.PathLike,
    /,
    transform: Callable | None = None,
    *,
    name: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    on_error: str = "fail",
    class_names: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    max_files: int | None = None,
) -> ImageFolderDataset:
    """Load a registered dataset (``source`` is its name) or any ImageFolder directory (``source`` is its path).

    ``max_per_class`` keeps a seeded random subset per class (the teaching and smoke profiles use it).
    ``class_names`` overrides the names (one per kept class folder, sorted folder order).
    ``on_error``: ``"fail"`` raises on an undecodable image, ``"skip"`` skips it and records its path.
    ``name`` renames the dataset (tables and caches use it); a folder dataset is named after its folder
    by default. ``classes`` keeps only these class folders, ``exclude`` drops these (labels count the kept
    folders in sorted order; an unknown folder name is an error). A folder that is the filesystem root or the
    home folder, or holds more than ``max_files`` files (default: env ``CLIPOOD_MAX_DATASET_FILES``, else
    2,000,000), is refused. Class folders named by WordNet id (``n01440764``) are named through ImageNet-1k's
    class names or WordNet (:mod:`helpers.data.wnids`).
    """
    spec, root = _spec_and_root(os.fspath(source), Path(data_dir) if data_dir else default_data_dir())
    ds_name = name or spec.name
    user_drop = _class_filter(root, ds_name, classes, exclude) if classes is not None or exclude else set()
    # a held-out split is drawn over all its classes, so a class subset of it keeps exactly its images
    late_drop = user_drop if spec.holdout is not None else set()
    kept, samples = scan_imagefolder(root, exclude=set(spec.exclude) | (user_drop - late_drop), max_files=max_files)
    if not samples:
        raise DatasetNotPreparedError(f"Dataset {ds_name!r} at {root} contains no images.")
    names = (list(class_names) if class_names is not None and not late_drop
             else read_class_names(spec.class_names, root, kept))
    ds = ImageFolderDataset(ds_name, root, kept, names, samples, transform, on_error)
    if spec.holdout is not None:
        probe = per_class_choice(ds.labels, spec.holdout.per_class, spec.holdout.seed)
        keep_idx = probe if spec.holdout.part == "probe" else np.setdiff1d(np.arange(len(ds)), probe)
        ds = ds.subset(keep_idx)
    if late_drop:
        ds = _without_classes(ds, late_drop, class_names)
    if max_per_class is not None:
        ds = ds.subset(per_class_choice(ds.labels, max_per_class, seed))
    return ds


def _without_classes(ds: ImageFolderDataset, drop: set[str], class_names: Sequence[str] | None) -> ImageFolderDataset:
    """``ds`` without the classes in ``drop``, labels renumbered over the kept classes (order kept)."""
    keep = [i for i, c in enumerate(ds.classes) if c not in drop]
    remap = {old: new for new, old in enumerate(keep)}
    names = list(class_names) if class_names is not None else [ds.class_names[i] for i in keep]
    return ImageFolderDataset(ds.name, ds.root, [ds.classes[i] for i in keep], names,
                              [(s.path, remap[s.label]) for s in ds.samples if s.label in remap],
                              ds.transform, ds.on_error)


def split_per_class(
    ds: ImageFolderDataset, per_class: int, seed: int = 0, names: tuple[str | None, str | None] = (None, None)
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Split ``ds`` into ``(part, rest)``: ``part`` holds ``per_class`` images of every class chosen with
    ``seed`` (all of a class that has fewer), ``rest`` the others; both keep ``ds``'s order, classes and labels.

    Named ``"<name>-<per_class>pc-s<seed>"`` and ``"<name>-rest<per_class>pc-s<seed>"`` unless ``names`` says
    otherwise, so that the two never share a name in a table or a cache key.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, not {per_class}")
    chosen = per_class_choice(ds.labels, per_class, seed) if per_class else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(ds)), chosen)
    part_name = names[0] or f"{ds.name}-{per_class}pc-s{seed}"
    rest_name = names[1] or f"{ds.name}-rest{per_class}pc-s{seed}"
    return ds.subset(chosen, name=part_name), ds.subset(rest, name=rest_name)
