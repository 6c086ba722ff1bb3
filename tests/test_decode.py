"""The tensor decode path (helpers/decode.py) against the PIL path it replaces: pixels, features, row order,
fallbacks for what decode_jpeg does not take, the bad-image policy, and cache keys (the PIL key must not move)."""

import io

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image
from torchvision import transforms

from helpers.cache import code_hash
from helpers.data import get_dataset, imagefolder
from helpers.decode import (
    RawImages,
    UnsupportedTransformError,
    collate_items,
    decode_items,
    decode_jpegs,
    finish_batch,
    jpeg_fast_path,
    preprocess_batch,
    read_item,
    resolve_decode,
    tensor_transform,
)
from helpers.errors import CorruptImageError
from helpers.features import (
    _check_vit,
    cache_key,
    cache_path,
    encode_images,
    extract_features,
    extraction_code_hash,
    value_path,
)

PIL_KEY_FIELDS = {"model_id", "checkpoint_sha256", "precision", "transform", "dataset", "files", "n_files", "kinds",
                  "autocast", "on_error", "code"}


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def picture():
    """A 40 x 52 RGB image with smooth gradients, sharp edges and noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:52]
    a = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1) % 256
    a[10:30, 20:24] = 255
    return Image.fromarray(np.clip(a + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def odd_files(tmp_path, picture):
    """An ImageFolder with one file of each kind the tensor path must route: baseline and progressive RGB JPEGs
    (decode_jpeg), a PNG, a grayscale and a CMYK JPEG (PIL), and a truncated JPEG (PIL decides: corrupt)."""
    root = tmp_path / "odd"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    files = {
        "a/baseline.jpg": _jpeg(picture),
        "a/progressive.jpg": _jpeg(picture, progressive=True),
        "a/padded.jpg": _jpeg(picture) + b"\x00" * 7,
        "b/gray.jpg": _jpeg(picture.convert("L")),
        "b/cmyk.jpg": _jpeg(picture.convert("CMYK")),
        "b/truncated.jpg": _jpeg(picture)[:300],
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    picture.save(root / "b" / "picture.png")
    return root


def test_jpeg_fast_path_reads_the_header(odd_files):
    want = {"baseline.jpg": True, "progressive.jpg": True, "padded.jpg": True, "gray.jpg": False,
            "cmyk.jpg": False, "truncated.jpg": False, "picture.png": False}
    got = {p.name: jpeg_fast_path(p.read_bytes()) for p in odd_files.rglob("*.*")}
    assert got == want
    assert not jpeg_fast_path(b"") and not jpeg_fast_path(b"\xff\xd8\xff\xd9")


def test_tensor_transform_reads_open_clip_preprocess(smoke_model):
    t = tensor_transform(smoke_model.preprocess)
    assert (t.size, t.crop, t.max_size) == (32, (32, 32), None)
    assert t.interpolation == transforms.InterpolationMode.BICUBIC
    np.testing.assert_allclose(t.mean, (0.48145466, 0.4578275, 0.40821073))
    np.testing.assert_allclose(t.std, (0.26862954, 0.26130258, 0.27577711))
    squash = tensor_transform(image_transform(48, is_train=False, resize_mode="squash", interpolation="bilinear"))
    assert (squash.size, squash.crop, squash.interpolation) == ((48, 48), None, transforms.InterpolationMode.BILINEAR)
    for bad in (image_transform(32, is_train=False, resize_mode="longest"),  # ResizeKeepRatio + CenterCropOrPad
                transforms.Compose([transforms.Resize(32), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)]),
                transforms.Compose([transforms.Resize(32, transforms.InterpolationMode.NEAREST),
                                    transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]),
                lambda im: im):
        with pytest.raises(UnsupportedTransformError, match="decode='pil'"):
            tensor_transform(bad)


def test_resolve_decode(smoke_model):
    pre = smoke_model.preprocess
    assert resolve_decode("auto", torch.device("cpu"), pre) == "pil"
    assert resolve_decode("auto", torch.device("cuda"), pre) == "tensor"  # no GPU needed to decide
    assert resolve_decode("tensor", torch.device("cpu"), pre) == "tensor"
    odd = image_transform(32, is_train=False, resize_mode="longest")
    with pytest.warns(UserWarning, match="falls back to PIL"):
        assert resolve_decode("auto", torch.device("cuda"), odd) == "pil"
    with pytest.raises(UnsupportedTransformError):
        resolve_decode("tensor", torch.device("cpu"), odd)
    with pytest.raises(ValueError, match="decode must be one of"):
        resolve_decode("gpu", torch.device("cpu"), pre)


@pytest.mark.parametrize("size,interp,resize_mode", [(32, "bicubic", "shortest"), (96, "bicubic", "shortest"),
                                                     (48, "bilinear", "shortest"), (40, "bicubic", "squash")])
def test_preprocessing_matches_the_pil_transform(require_data, size, interp, resize_mode):
    """Pixels of the tensor path vs open_clip's PIL transform on real images (downscaled 256->size, 64->size;
    MNIST PNGs upscaled 28->size), in 0..255 units: mean |diff| < 0.01 levels, under 0.2 % of the values off by more
    than one level, none by more than 8 (PIL's fixed point vs torch's float32; see helpers/decode.py). One float
    pass without PIL's rounding between its passes fails this (mean 0.1-0.2 levels, up to 25 levels)."""
    pre = image_transform(size, is_train=False, interpolation=interp, resize_mode=resize_mode)
    t = tensor_transform(pre)
    std = torch.tensor(t.std).view(3, 1, 1)
    for name in ("dtd10", "tiny-imagenet-near", "mnist"):
        ds = get_dataset(name, max_per_class=1)
        ref = torch.stack([pre(ds.load_rgb(i)) for i in range(len(ds))])
        idx = list(range(len(ds)))
        x = preprocess_batch(decode_items([read_item(ds, i) for i in idx], idx, ds, torch.device("cpu")), t)
        assert x.shape == ref.shape and x.dtype == torch.float32
        d = ((x - ref) * std * 255).abs()
        assert d.mean() < 0.01 and (d > 1.01).float().mean() < 0.002 and d.max() < 8.01, (name, d.mean(), d.max())


def test_crop_larger_than_the_image_pads_like_centercrop(picture):
    pre = transforms.Compose([transforms.Resize(20), transforms.CenterCrop((24, 36)), transforms.ToTensor(),
                              transforms.Normalize([0.5] * 3, [0.25] * 3)])
    x = preprocess_batch([torch.from_numpy(np.array(picture)).permute(2, 0, 1)], tensor_transform(pre))
    ref = pre(picture)
    assert x.shape == (1, *ref.shape)
    assert ((x[0] - ref).abs() * 0.25 * 255).max() <= 1.01
    np.testing.assert_array_equal(x[0][:, :2].numpy(), ref[:, :2].numpy())  # the zero padding rows


def test_decode_jpegs_falls_back_image_by_image(picture):
    good = torch.frombuffer(bytearray(_jpeg(picture)), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"), dtype=torch.uint8)
    out = decode_jpegs([good, bad, good], torch.device("cpu"))
    assert out[1] is None and out[0].shape == (3, 40, 52) and torch.equal(out[0], out[2])
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), np.array(Image.open(io.BytesIO(_jpeg(picture)))))


def test_fallbacks_and_the_skip_policy(smoke_model, odd_files, tmp_cache):
    """PNG, grayscale and CMYK JPEGs go through PIL's load_rgb in the same batch, the truncated JPEG is skipped and
    listed; every other row equals the PIL path's (these images are resized 40 -> 32 alike)."""
    ds = get_dataset(str(odd_files), on_error="skip")
    kinds = {p: read_item(ds, i).ndim for i, p in enumerate(ds.paths) if read_item(ds, i) is not None}
    assert kinds == {"a/baseline.jpg": 1, "a/padded.jpg": 1, "a/progressive.jpg": 1, "b/cmyk.jpg": 3,
                     "b/gray.jpg": 3, "b/picture.png": 3}
    pil = extract_features(smoke_model, ds, kinds=("image",), num_workers=0, progress=False, decode="pil")
    ten = extract_features(smoke_model, ds, kinds=("image",), num_workers=0, progress=False, decode="tensor",
                           batch_size=4)
    assert ten.failed == pil.failed == ["b/truncated.jpg"]
    assert ten.paths == pil.paths and ten.labels.tolist() == pil.labels.tolist() == [0, 0, 0, 1, 1, 1]
    cos = (ten.image * pil.image).sum(1)
    assert cos.min() > 0.995, cos


def test_gpu_batching_decodes_in_the_main_process_alike(odd_files):
    """On CUDA the workers only read files (collate_items) and the main process decodes and preprocesses the batch
    (finish_batch): run that arrangement on the CPU and compare with the workers' arrangement (the CPU path)."""
    ds = get_dataset(str(odd_files), on_error="skip")
    t = tensor_transform(image_transform(32, is_train=False))
    batch = [RawImages(ds)[i] for i in range(len(ds))]
    images, labels, indices, failed = finish_batch(collate_items(batch), ds, t, torch.device("cpu"))
    ref_images, ref_labels, ref_indices, ref_failed = finish_batch(batch, ds, t, torch.device("cpu"))
    assert failed == ref_failed == [ds.paths.index("b/truncated.jpg")]
    assert torch.equal(indices, ref_indices) and torch.equal(labels, ref_labels) and torch.equal(images, ref_images)
    pil = torch.stack([image_transform(32, is_train=False)(ds.load_rgb(int(i))) for i in indices])
    assert ((images - pil).abs() * 255 * 0.27).max() < 1.01


def test_corrupt_jpeg_raises_naming_the_file(smoke_model, odd_files, tmp_cache):
    ds = get_dataset(str(odd_files))
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        extract_features(smoke_model, ds, kinds=("image",), num_workers=0, progress=False, decode="tensor")


def test_tensor_features_agree_with_pil_in_the_same_row_order(smoke_model, require_data, tmp_cache):
    """Real teaching images: CIFAR-10 JPEGs at the model's 32 px (no resize: libjpeg-turbo gives PIL's pixels, so
    the features are equal), DTD (256 px JPEGs) and MNIST (PNG, PIL fallback, upscaled) agree to cosine > 0.99."""
    for name, per_class, kw in (("cifar10-test", 3, {"num_workers": 1}), ("dtd10", 2, {}), ("mnist", 2, {})):
        ds = get_dataset(name, max_per_class=per_class)
        pil = extract_features(smoke_model, ds, kinds=("image", "preproj"), progress=False, num_workers=0,
                               decode="pil")
        ten = extract_features(smoke_model, ds, kinds=("image", "preproj"), progress=False, batch_size=7,
                               decode="tensor", **{"num_workers": 0, **kw})
        assert ten.paths == pil.paths == ds.paths and ten.labels.tolist() == ds.labels.tolist()
        cos = (ten.image * pil.image).sum(1)
        assert cos.min() > 0.99, (name, cos.min())
        if name == "cifar10-test":
            np.testing.assert_allclose(ten.image, pil.image, atol=1e-5)
            np.testing.assert_allclose(ten.preproj, pil.preproj, atol=1e-4)
    again = extract_features(smoke_model, ds, kinds=("image", "preproj"), progress=False, num_workers=0,
                             decode="tensor")
    assert again.meta["from_cache"] and np.array_equal(again.image, ten.image)


def test_pil_cache_key_is_unchanged_and_the_tensor_key_differs(smoke_model, require_data):
    """Caches written before the decode option existed stay valid: the PIL key has exactly the old fields and the
    extraction-code hash covers exactly the old functions; the tensor path's key names its decoder."""
    ds = get_dataset("cifar10-test", max_per_class=2).with_transform(smoke_model.preprocess)
    pil = cache_key(smoke_model, ds, ("image",), "fp32")
    assert set(pil) == PIL_KEY_FIELDS and pil == cache_key(smoke_model, ds, ("image",), "fp32", "pil")
    assert extraction_code_hash() == code_hash(encode_images, value_path, _check_vit, imagefolder.to_rgb,
                                               imagefolder.ImageFolderDataset.load_rgb)
    tensor = cache_key(smoke_model, ds, ("image",), "fp32", "tensor")
    assert tensor["decode"] == "tensor/libjpeg-turbo" and len(tensor["decode_code"]) == 16
    assert {k: v for k, v in tensor.items() if k not in ("decode", "decode_code")} == pil
    assert cache_path(tensor) != cache_path(pil)


def test_cpu_extraction_default_is_pil(smoke_model, require_data, tmp_cache):
    ds = get_dataset("cifar10-test", max_per_class=1)
    f = extract_features(smoke_model, ds, kinds=("image",), num_workers=0, progress=False)
    assert "decode" not in f.meta["key"]
