"""helpers.data.stream: training images read per batch from their files, each cropped from the original image by a
crop whose randomness is keyed by (seed, step, row)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms
from torchvision.transforms import functional as TF

from helpers import distributed
from helpers.data import get_dataset
from helpers.data.stream import RandomResizedCrop, StreamedImages


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of 11 RGB images of different, non-square sizes in two classes."""
    root = tmp_path_factory.mktemp("stream") / "shapes"
    rng = np.random.default_rng(0)
    for i in range(11):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:02d}.png")
    return get_dataset(str(root))


def test_a_rank_reads_the_crops_that_one_process_reads(folder, monkeypatch):
    crop = RandomResizedCrop(24, scale=(0.08, 1.0), flip=True)
    rows = [7, 0, 3, 3, 10, 5, 1, 8, 2]  # a global batch (a row may repeat across epochs; here within one)
    with StreamedImages(folder, crop, seed=4, workers=0) as one:
        whole = one(rows, step=5)
        assert not torch.equal(whole, one(rows, step=6))  # another step, other crops
    with StreamedImages(folder, crop, seed=5, workers=0) as other_seed:
        assert not torch.equal(whole, other_seed(rows, step=5))
    for world in (2, 3, 4):
        parts = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            start, stop = distributed.shard_bounds(len(rows))
            with StreamedImages(folder, crop, seed=4, workers=rank + 1) as mine:  # any number of threads
                parts.append(mine(rows[start:stop], step=5))
        assert torch.equal(torch.cat(parts), whole), world
    # the same row twice in a batch: the same crop (keyed by row, not by position)
    assert torch.equal(whole[2], whole[3])


def test_a_crop_of_the_whole_image_is_the_original_resized_not_a_centre_square(folder):
    # scale 1 and a ratio range holding the image's own aspect: the box is the whole (non-square) image, so the
    # result is PIL's bicubic resize of the original to 24 x 24, which a crop of a centre square cannot give
    row = next(i for i in range(len(folder)) if abs(math.log(np.divide(*folder.load_rgb(i).size))) > 0.2)
    img = folder.load_rgb(row)
    w, h = img.size
    crop = RandomResizedCrop(24, scale=(1.0, 1.0), ratio=(w / h, w / h))
    assert crop.box(w, h, np.random.default_rng(0)) == (0, 0, h, w)
    with StreamedImages(folder, crop, workers=0) as images:
        got = images([row], step=0)[0]
    expected = TF.to_tensor(img.resize((24, 24), Image.BICUBIC))
    assert torch.equal(got, expected)
    square = TF.to_tensor(TF.center_crop(img, min(w, h)).resize((24, 24), Image.BICUBIC))
    assert (got - square).abs().max() > 0.1


def test_normalize_is_applied_to_the_batch(folder):
    norm = transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    crop = RandomResizedCrop(16)
    with StreamedImages(folder, crop, seed=1, workers=0) as raw, \
            StreamedImages(folder, crop, norm, seed=1, workers=2) as normed:
        x, y = raw([0, 1, 2], 3), normed([0, 1, 2], 3)
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)
    assert torch.allclose(y, (x - mean) / std, atol=1e-6)


@pytest.mark.parametrize("width,height,scale", [(640, 480, (0.9, 1.0)), (640, 480, (0.08, 1.0)),
                                                (300, 500, (0.9, 1.0)), (256, 256, (0.5, 1.0))])
def test_crop_boxes_follow_torchvisions_rule(width, height, scale):
    n = 4000
    ratio = (3 / 4, 4 / 3)
    ours = RandomResizedCrop(224, scale=scale, ratio=ratio)
    rng = np.random.default_rng(0)
    a = np.array([ours.box(width, height, rng) for _ in range(n)], dtype=float)  # (top, left, h, w)
    torch.manual_seed(0)
    img = torch.empty(3, height, width)
    b = np.array([transforms.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)],
                 dtype=float)
    for boxes in (a, b):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    # the fallback after ten rejected tries: the whole image cut to the nearest aspect ratio in range, centred
    in_ratio = width / height
    fw, fh = ((width, round(width / ratio[0])) if in_ratio < ratio[0] else
              (round(height * ratio[1]), height) if in_ratio > ratio[1] else (width, height))
    fallback = [(boxes == [(height - fh) // 2, (width - fw) // 2, fh, fw]).all(1) for boxes in (a, b)]
    top, left, h, w = a[~fallback[0]].T
    area, aspect = h * w / (width * height), w / h
    # rounding w and h to integers moves the area and the aspect by at most about (1/w + 1/h) / 2 of themselves
    assert (area >= scale[0] * 0.99).all() and (area <= scale[1] * 1.01).all()
    assert (aspect >= ratio[0] * 0.99).all() and (aspect <= ratio[1] * 1.01).all()
    # the distributions equal torchvision's (two-sample KS on area, log-aspect and the normalised offsets)
    feats = []
    for top, left, h, w in (a.T, b.T):
        feats.append({"area": h * w, "log aspect": np.log(w / h),
                      "top": (top + 0.5) / (height - h + 1), "left": (left + 0.5) / (width - w + 1)})
    for name in feats[0]:
        p = stats.ks_2samp(feats[0][name], feats[1][name]).pvalue
        assert p > 1e-3, (name, p)
    # the rate of the fallback equals torchvision's (within four binomial standard deviations)
    rate = [f.mean() for f in fallback]
    assert abs(rate[0] - rate[1]) <= 4 * math.sqrt(rate[1] * (1 - rate[1]) / n) + 1e-12, rate
