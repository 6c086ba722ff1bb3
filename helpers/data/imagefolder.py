"""ImageFolder datasets with a stable file list, prompt-ready class names and a policy for bad images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ClassNameMismatchError, CorruptImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def scan_imagefolder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folders (sorted) and ``(relative path, label)`` pairs sorted by class then file name.

    A folder without class sub-folders is one class named after the folder.
    """
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        classes, dirs = [root.name], [root]
    else:
        classes, dirs = subdirs, [root / d for d in subdirs]
    samples = []
    for label, d in enumerate(dirs):
        for dirpath, _, files in sorted(os.walk(d, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.relpath(os.path.join(dirpath, f), root), label))
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
                return im.convert("RGB")  # forces the decode, so truncated files fail here
        except DECODE_ERRORS as e:
            if self.on_error == "skip":
                return None
            raise CorruptImageError(
                f"Cannot decode image {path} (dataset {self.name!r}, index {i}): {e}. "
                f"Fix: replace or delete the file, or pass on_error='skip' to skip it and record its path."
            ) from e

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
        for s in self.samples:
            st = (self.root / s.path).stat()
            h.update(f"{s.path}\t{s.label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
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
