"""Training images streamed from their files, one batch at a time, each through a seeded random crop.

Trainings that augment (CMA's and SeTAR+FT's ``RandomResizedCrop``) must crop the *original* image, as the
official code's ``transforms.RandomResizedCrop`` does, and must not hold the training set in memory (ImageNet-1k
train decoded at 224 px is 193 GB). :class:`StreamedImages` reads only the rows of the batch it is asked for,
with a thread pool (PIL decodes and resizes outside the GIL), so memory stays one batch whatever the dataset.

The randomness of a crop is fixed by ``(seed, step, row)`` (:func:`numpy.random.default_rng` of the three), not
by a shared generator: a rank of a ``torchrun`` job that reads only its slice of the global batch draws the same
crops that one process reading the whole batch draws, whatever the number of threads and in any order.

:class:`RandomResizedCrop` is torchvision's ``RandomResizedCrop.get_params`` rule (ten tries of a random area in
``scale`` and a log-uniform aspect ratio in ``ratio``, else the largest centred crop within ``ratio``), with an
optional horizontal flip, drawing from a given generator.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .imagefolder import ImageFolderDataset


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random crop of ``scale`` × the image's area with aspect ratio in ``ratio``, resized to ``size`` × ``size``
    (``interpolation``, antialiased), flipped left-right with probability ½ when ``flip``."""

    size: int
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    interpolation: str = "bicubic"

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the crop, as ``torchvision``'s ``RandomResizedCrop.get_params``."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height  # fallback: the whole image, cut to the nearest allowed aspect ratio
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left, h, w = self.box(*img.size, rng)
        out = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=InterpolationMode(self.interpolation), antialias=True)
        return TF.hflip(out) if self.flip and rng.random() < 0.5 else out


class StreamedImages:
    """Rows of ``ds`` read from their files per batch: ``images(rows, step)`` is a float tensor (B, 3, S, S),
    each image through ``crop`` (drawn from ``default_rng([seed, step, row])``), scaled to [0, 1] and normalised
    with ``normalize`` (a ``transforms.Normalize``; None: left in [0, 1]). ``workers`` threads read a batch
    (default: the CPU count, at most 8; 0 reads in this thread). An image that cannot be decoded stops the run
    with its path: training data must be clean."""

    def __init__(self, ds: ImageFolderDataset, crop: RandomResizedCrop, normalize=None, *, seed: int = 0,
                 workers: int | None = None):
        self.ds, self.crop, self.normalize, self.seed = ds, crop, normalize, seed
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="stream") if workers > 0 else None

    def one(self, row: int, step: int) -> torch.Tensor:
        """Row ``row`` at ``step``: (3, S, S) in [0, 1]."""
        img = self.ds.load_rgb(row)
        if img is None:
            raise ValueError(f"{self.ds.root / self.ds.samples[row].path} cannot be decoded; training data must be "
                             "clean (remove the file, or fix it)")
        return TF.to_tensor(self.crop(img, np.random.default_rng([self.seed, step, row])))

    def __call__(self, rows, step: int) -> torch.Tensor:
        rows = [int(r) for r in rows]
        jobs = self._pool.map(self.one, rows, [step] * len(rows)) if self._pool else map(self.one, rows,
                                                                                           [step] * len(rows))
        x = torch.stack(list(jobs))
        return self.normalize(x) if self.normalize is not None else x

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> StreamedImages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
