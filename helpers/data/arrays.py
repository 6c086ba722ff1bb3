"""Decoded images as one uint8 array, cached: the pocket CLIP trains from memory, not from JPEG files."""

from __future__ import annotations

import numpy as np
from torchvision import transforms
from tqdm.auto import tqdm

from .imagefolder import ImageFolderDataset


def geometry(size: int) -> transforms.Compose:
    """The geometric part of open_clip's inference transform: bicubic shortest-side resize, centre crop."""
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size)])


def decoded_images(ds: ImageFolderDataset, size: int, progress: bool = True) -> np.ndarray:
    """(N, size, size, 3) uint8 array of ``ds`` resized like open_clip's transform. Cached
    (:func:`helpers.cache.cached_arrays`, ``<cache>/decoded/``, an ``.npy`` file that ``np.load`` can memory-map)
    keyed by the dataset's file list (paths, sizes, times, labels), ``size`` and the decoding and resizing code."""
    from ..cache import cached_arrays, code_hash
    from .imagefolder import to_rgb

    key = {"dataset": ds.name, "files": ds.fingerprint(), "n": len(ds), "size": size,
           "code": code_hash(geometry, to_rgb, ImageFolderDataset.load_rgb, _decode)}

    def check(arrays, _):
        if arrays["images"].shape != (len(ds), size, size, 3) or arrays["images"].dtype != np.uint8:
            raise ValueError(f"images.npy is {arrays['images'].dtype} {arrays['images'].shape}, expected uint8 "
                             f"{(len(ds), size, size, 3)}")

    arrays, _, _ = cached_arrays("decoded", f"{ds.name}-{size}", key, lambda: ({"images": _decode(ds, size, progress)}, {}),
                                 what="decoded-image cache", check=check)
    return arrays["images"]


def _decode(ds: ImageFolderDataset, size: int, progress: bool) -> np.ndarray:
    geo = geometry(size)
    out = np.empty((len(ds), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(len(ds)), desc=f"decode {ds.name}", disable=not progress, mininterval=2):
        img = ds.load_rgb(i)
        if img is None:
            raise ValueError(f"{ds.root / ds.samples[i].path} cannot be decoded; training data must be clean.")
        out[i] = np.asarray(geo(img))
    return out
