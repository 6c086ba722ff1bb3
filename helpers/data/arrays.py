"""Decoded images as one uint8 array, cached: the pocket CLIP trains from memory, not from JPEG files."""

from __future__ import annotations

import numpy as np
from torchvision import transforms
from tqdm.auto import tqdm

from ..io import atomic_path
from ..paths import cache_dir
from .imagefolder import ImageFolderDataset


def geometry(size: int) -> transforms.Compose:
    """The geometric part of open_clip's inference transform: bicubic shortest-side resize, centre crop."""
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size)])


def decoded_images(ds: ImageFolderDataset, size: int, progress: bool = True) -> np.ndarray:
    """(N, size, size, 3) uint8 array of ``ds`` resized like open_clip's transform; cached by the file list and the
    decoding and resizing code (:func:`helpers.cache.code_hash`)."""
    from ..cache import code_hash
    from .imagefolder import to_rgb

    code = code_hash(geometry, to_rgb, ImageFolderDataset.load_rgb)
    path = cache_dir() / "decoded" / f"{ds.name}-{ds.fingerprint()[:16]}-{code}-{size}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (len(ds), size, size, 3):
                return np.array(arr)  # a writable copy in memory
        except (OSError, ValueError, EOFError):
            pass  # truncated or foreign file: decode again
    geo = geometry(size)
    out = np.empty((len(ds), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(len(ds)), desc=f"decode {ds.name}", disable=not progress, mininterval=2):
        img = ds.load_rgb(i)
        if img is None:
            raise ValueError(f"{ds.root / ds.samples[i].path} cannot be decoded; training data must be clean.")
        out[i] = np.asarray(geo(img))
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, out)
    return out
