"""ImageFolder datasets with a stable file list, prompt-ready class names and a policy for bad images."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import ClassNameMismatchError, CorruptImageError, EmptyClassError, UsageError, clause

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
_CONTENT: dict[str, str] = {}  # content fingerprints already computed, by file-list fingerprint
MAX_DATASET_FILES = 2_000_000  # the most files one dataset root may hold (ImageNet-1k train has 1.28 M)
MAX_FILES_ENV = "CLIPOOD_MAX_DATASET_FILES"  # overrides MAX_DATASET_FILES
PROGRESS_AFTER_FILES = 10_000  # a scan shows a progress bar once it has seen this many files ...
PROGRESS_AFTER_SECONDS = 2.0  # ... or has run this long


class DatasetRootTooBroadError(UsageError):
    """A dataset folder that is the filesystem root, the home folder, or holds more files than the cap."""


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB image of any PIL image, decoded fully (so a truncated file fails here).

    - 16- and 32-bit integer images (``I;16*``, ``I``: 16-bit grayscale PNG/TIFF) are scaled from their
      0-65535 range to 0-255 (PIL's own ``convert("RGB")`` clips them, which turns most pixels white);
      32-bit float images (``F``) are taken to lie in [0, 1] when their maximum is at most 1, else in [0, 255];
    - images with transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) are
      composited onto :data:`ALPHA_BACKGROUND` (white) instead of dropping the alpha channel.
    """
    im.load()
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.round(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder tree (sorted, hidden folders left out); empty for a flat folder."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def max_dataset_files(max_files: int | None = None) -> int:
    """The most files one dataset root may hold: ``max_files`` when given, else the environment variable
    ``CLIPOOD_MAX_DATASET_FILES``, else :data:`MAX_DATASET_FILES`."""
    raw, where = (max_files, "max_files") if max_files is not None else (
        os.environ.get(MAX_FILES_ENV), MAX_FILES_ENV)
    if raw is None:
        return MAX_DATASET_FILES
    try:
        value = int(str(raw).replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{where}={raw!r} is not a positive number of files. Fix: e.g. {MAX_FILES_ENV}=5000000 "
                         f"(default {MAX_DATASET_FILES:,}).")
    return value


def check_root(root: Path) -> None:
    """Refuse the filesystem root and the home folder as dataset roots, before anything is listed."""
    real = Path(root).expanduser().resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known
        home = None
    if real == real.parent or real == home:
        what = "the filesystem root" if real == real.parent else "your home folder"
        raise DatasetRootTooBroadError(
            f"Dataset folder {root} is {what}: scanning it would read every file below it, so it is refused. A "
            f"single path given where a list is expected (ood_datasets=/data/x without brackets) is split into "
            f"characters, and '/' is the first. Fix: pass the folder that holds the class folders "
            f"(<folder>/<class>/<image>), and lists as lists: --set ood_datasets='[\"/data/my_ood\"]'.")


class _Walk:
    """Lists the folders below class folders without leaving the dataset or looping.

    Real folders are listed first (:meth:`tree`), then symlinked folders (:meth:`follow`): one is followed only when
    its target lies inside the dataset root (or the class folder being listed) and was not listed yet, so a folder
    reachable both ways keeps its real path and every image is listed once. Files are counted against a cap while
    listing, and a long scan shows a progress bar.
    """

    def __init__(self, root: Path, cap: int, progress: bool):
        self.root, self.cap, self.progress = root, cap, progress
        self.real_root = os.path.realpath(root)
        self.seen: set[tuple[int, int]] = set()
        self.files, self.bar, self.t0 = 0, None, time.monotonic()

    def first_visit(self, path: str | os.PathLike) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def tree(self, top: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """``(folder, file names)`` of ``top`` and the real folders below it, and the symlinked folders met."""
        out, links, stack = [], [], [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue  # an unreadable folder is skipped, as os.walk did
            files = []
            for e in entries:
                kind = _kind(e)
                if kind == "file":
                    files.append(e.name)
                elif kind == "link":
                    links.append(e.path)
                elif self.first_visit(e.path):
                    stack.append(e.path)
            out.append((d, files))
            self._count(len(files))
        return out, links

    def follow(self, links: list[str], top: str) -> list[tuple[str, list[str]]]:
        """The folders reached through the symlinked folders ``links`` (and the links below them) whose target
        lies inside the dataset root or ``top`` and was not listed yet."""
        inside = tuple(r.rstrip(os.sep) + os.sep for r in (self.real_root, os.path.realpath(top)))
        out, pending = [], sorted(links)
        while pending:
            link = pending.pop(0)
            if (os.path.realpath(link) + os.sep).startswith(inside) and self.first_visit(link):
                folders, nested = self.tree(link)
                out += folders
                pending += sorted(nested)
        return out

    def _count(self, n: int) -> None:
        self.files += n
        if self.files > self.cap:
            self.close()
            raise DatasetRootTooBroadError(
                f"Dataset folder {self.root} holds more than {self.cap:,} files (stopped counting at "
                f"{self.files:,}): more than a dataset should (ImageNet-1k train has 1.28 M), so the path probably "
                f"points above the dataset. Fix: pass the folder that holds the class folders "
                f"(<folder>/<class>/<image>); if the dataset really is this large, raise the cap with "
                f"get_dataset(..., max_files=N) or the environment variable {MAX_FILES_ENV}=N.")
        if self.bar is not None:
            self.bar.update(n)
        elif self.progress and (self.files > PROGRESS_AFTER_FILES
                                or time.monotonic() - self.t0 > PROGRESS_AFTER_SECONDS):
            self.bar = tqdm(desc=f"scanning {self.root}", unit=" files", initial=self.files)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _kind(entry: os.DirEntry) -> str:
    """``"dir"`` (a real folder), ``"link"`` (a symlink to a folder) or ``"file"`` (anything else, as os.walk)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        return "link" if entry.is_symlink() and entry.is_dir() else "file"
    except OSError:
        return "file"


def scan_imagefolder(root: Path, exclude: Collection[str] = (), *, max_files: int | None = None,
                     progress: bool = True) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folders (sorted) and ``(relative path, label)`` pairs sorted by class then file name.

    A folder without class sub-folders is one class named after the folder. Class folders named in ``exclude``
    are left out (not scanned; the labels count the kept folders). A class folder without any image raises
    :class:`~helpers.errors.EmptyClassError` naming every such folder; files that are not images (by extension,
    :data:`IMG_EXTENSIONS`; hidden files aside) are skipped with one warning that gives their count and names.
    The filesystem root, the home folder and a root with more than :func:`max_dataset_files` files are refused
    (:class:`DatasetRootTooBroadError`); symlinked folders are followed only within the dataset and once (see
    :class:`_Walk`); a scan past 10,000 files or 2 s shows a progress bar unless ``progress=False``.
    """
    check_root(root)
    walk = _Walk(root, max_dataset_files(max_files), progress)
    subdirs = class_folders(root)
    for folder in [root, *(root / d for d in subdirs)]:  # no link below a class folder leads into another
        walk.first_visit(folder)
    if not subdirs:
        classes, dirs = [root.name], [root]
    else:
        skip = set(exclude)
        classes = [d for d in subdirs if d not in skip]
        dirs = [root / d for d in classes]
    samples = []
    empty, others = [], []
    try:
        found = [walk.tree(str(d)) for d in dirs]  # every real folder first: it keeps its own path and class
        found = [folders + walk.follow(links, str(d)) for d, (folders, links) in zip(dirs, found)]
    finally:
        walk.close()
    for label, (d, folders) in enumerate(zip(dirs, found)):
        n_before = len(samples)
        for dirpath, files in sorted(folders):
            rel = os.path.relpath(dirpath, root)  # once per folder: relpath per file costs seconds on 50k files
            for f in files:
                path = f if rel == "." else os.path.join(rel, f)
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((path, label))
                elif not f.startswith("."):
                    others.append(path)
        if len(samples) == n_before and d != root:
            empty.append(classes[label])
    if empty:
        raise EmptyClassError(
            f"{len(empty)} class folder(s) of {root} hold no image: {', '.join(empty[:10])}"
            f"{', ...' if len(empty) > 10 else ''} (image extensions: {' '.join(IMG_EXTENSIONS)}). An empty "
            f"folder would become a class with no images. Fix: add images to it, delete it, or leave it out "
            f"with get_dataset(..., exclude=[{', '.join(repr(c) for c in empty[:3])}])."
        )
    if others:
        warnings.warn(
            f"{root}: skipped {len(others)} file(s) that are not images: {', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''} (image extensions: {' '.join(IMG_EXTENSIONS)}).",
            UserWarning, stacklevel=2,
        )
    return classes, samples


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root
    label: int


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of one dataset, in a fixed order, with labels aligned to ``classes``.

    ``__getitem__`` returns ``(image, label, index)``; with ``on_error="skip"`` an undecodable image
    yields ``(None, label, index)`` and :func:`collate_skip` drops it from the batch while the caller
    records the index, so labels and paths stay aligned with the features that were computed.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike,
        classes: Sequence[str],
        class_names: Sequence[str],
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        on_error: str = "fail",
    ):
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
        if len(class_names) != len(classes):
            raise ClassNameMismatchError(
                f"Dataset {name!r} has {len(classes)} class folders in {root} but {len(class_names)} class "
                f"names were given. Fix: give one name per folder, in the sorted folder order "
                f"({', '.join(list(classes)[:5])}{', ...' if len(classes) > 5 else ''})."
            )
        self.name = name
        self.root = Path(root)
        self.classes = list(classes)
        self.class_names = list(class_names)
        self.samples = [Sample(p, int(y)) for p, y in samples]
        self.transform = transform
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    def load_rgb(self, i: int) -> Image.Image | None:
        path = self.root / self.samples[i].path
        try:
            with Image.open(path) as im:
                return to_rgb(im)
        except DECODE_ERRORS as e:
            if self.on_error == "skip":
                return None
            raise self._decode_error(path, i, e) from e

    def _decode_error(self, path: Path, i: int, e: Exception) -> CorruptImageError:
        return CorruptImageError(
            f"Cannot decode image {path} (dataset {self.name!r}, index {i}): {clause(e)}. Fix: replace or delete "
            f"the file, or skip undecodable images and record their paths: on_error='skip' (a notebook parameter; "
            f"`python -m helpers.run --set on_error=skip`).")

    def __getitem__(self, i: int):
        img = self.load_rgb(i)
        if img is not None and self.transform is not None:
            img = self.transform(img)
        return img, self.samples[i].label, i

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageFolderDataset:
        return ImageFolderDataset(
            name or self.name, self.root, self.classes, self.class_names,
            [(self.samples[i].path, self.samples[i].label) for i in indices], self.transform, self.on_error,
        )

    def with_transform(self, transform: Callable | None) -> ImageFolderDataset:
        return ImageFolderDataset(self.name, self.root, self.classes, self.class_names,
                                  [(s.path, s.label) for s in self.samples], transform, self.on_error)

    def fingerprint(self) -> str:
        """Hash of what determines the content: file paths, sizes, modification times, labels, classes."""
        h = hashlib.sha256()
        h.update(("\x1f".join(self.classes) + "\x1e" + "\x1f".join(self.class_names)).encode())
        root = str(self.root)
        for s in self.samples:
            st = os.stat(os.path.join(root, s.path))
            h.update(f"{s.path}\t{s.label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def content_fingerprint(self) -> str:
        """Like :meth:`fingerprint` but hashing every file's *bytes* instead of its size and modification time:
        a copied folder (``cp -r``) keeps it. Used for long trainings' cache keys. Reading every file takes a
        while, so the result is remembered, in memory and in the cache (:func:`helpers.cache.cached_arrays`,
        ``<cache>/fingerprints/``), keyed by the exact file list, sizes and modification times it was computed for
        and the hashing code; any change to those reads the bytes again."""
        from ..cache import cached_arrays, code_hash

        stamp = self.fingerprint()
        if stamp not in _CONTENT:
            key = {"files": stamp, "code": code_hash(ImageFolderDataset._content_sha256)}
            _, info, _ = cached_arrays("fingerprints", self.name, key, lambda: ({}, {"sha256": self._content_sha256()}),
                                       what="content-fingerprint cache")
            _CONTENT[stamp] = info["sha256"]
        return _CONTENT[stamp]

    def _content_sha256(self) -> str:
        h = hashlib.sha256()
        h.update(("\x1f".join(self.classes) + "\x1e" + "\x1f".join(self.class_names)).encode())
        root = str(self.root)
        for s in self.samples:
            h.update(f"{s.path}\t{s.label}\t".encode())
            with open(os.path.join(root, s.path), "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes, root={self.root})"


def collate_skip(batch):
    """Stack the decodable images of a batch; return ``(images, labels, indices, failed_indices)``."""
    good = [b for b in batch if b[0] is not None]
    failed = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failed
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return images, labels, indices, failed


def per_class_choice(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` images of every class, chosen with ``seed`` (all if fewer)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)
