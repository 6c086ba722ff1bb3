"""Decoding and preprocessing on tensors, so that feature extraction is not bound by PIL on the CPU.

Why: PIL decodes about 240 JPEGs per second per core; a few CPU workers cannot feed an AMP ViT-B on a GPU.
``extract_features(..., decode="tensor")`` instead decodes JPEGs with ``torchvision.io.decode_jpeg`` — in batches on
the GPU with nvJPEG when the model is on CUDA, with libjpeg-turbo on the CPU otherwise — and resizes, crops and
normalises the decoded ``uint8`` tensors with torch (on the GPU when the model is there). ``decode="auto"`` (the
default) takes this path on CUDA and PIL's (``loaded.preprocess`` in DataLoader workers) everywhere else.

What goes where (:func:`jpeg_fast_path` reads the file's header):

- nvJPEG / ``decode_jpeg``: 8-bit, 3-component (YCbCr) JPEGs, baseline, extended or progressive Huffman, that end
  with the end-of-image marker;
- PIL (:meth:`ImageFolderDataset.load_rgb`, the very code of the PIL path, in the same batch): everything else —
  PNG and other formats, grayscale (1 component) and CMYK/YCCK (4 components) JPEGs, which nvJPEG does not decode
  to RGB (grayscale) or at all (CMYK), RGB-coded (Adobe transform 0), 12-bit, lossless and arithmetic-coded JPEGs,
  truncated files, and any JPEG whose tensor decode raises. PIL thus decides about corrupt files, and the
  bad-image policy (``on_error``: raise :class:`~helpers.errors.CorruptImageError` naming the file, or skip and
  list it in ``Features.failed``) applies exactly as on the PIL path.

Resize: the model's ``Resize`` (open_clip: bicubic, shorter side to the input size; read from ``loaded.preprocess``
by :func:`tensor_transform`, which refuses any other transform form) is applied as PIL's ``Image.resize`` does it:
a horizontal pass, rounded half up and clamped to 8 bits, then a vertical pass, rounded and clamped again (PIL clips a
bicubic overshoot at a sharp edge between its passes; one float pass differs from it by up to 25 levels there).
Each pass is ``torchvision.transforms.v2.functional.resize(antialias=True)`` on float32 tensors, torch's
PIL-compatible kernel: bicubic with a = -0.5 (PIL's coefficient, not the a = -0.75 of ``antialias=False``) and,
when downscaling, the filter support widened by the scale factor as PIL does; the output size comes from the
function ``Resize`` uses for PIL images. What remains is PIL's fixed-point arithmetic against torch's float32:
on the teaching and ImageNet-sample images at 32-224 px, 0-0.7 % of the pixel values differ, almost all by one
level (mean absolute difference below 0.01 levels, largest 7 levels; ``tests/test_decode.py`` pins the
tolerance). nvJPEG's IDCT and
chroma upsampling differ from libjpeg-turbo's by a few levels; on the CPU ``decode_jpeg`` (libjpeg-turbo, like
PIL) gives PIL's pixels exactly. Crop and normalisation are exact (``CenterCrop``'s anchor and zero padding;
``(x / 255 - mean) / std`` as ``ToTensor`` + ``Normalize``).

Features therefore differ slightly between the paths, so the feature-cache key records the path
(:func:`decode_id`) and the hash of this module's code (``benchmarks/decode_agreement.py`` measures the agreement).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from torchvision.transforms.functional import _compute_resized_output_size
from torchvision.transforms.v2 import functional as TF

from .cache import code_hash
from .data import ImageFolderDataset
from .errors import ClipOODError

DECODES = ("pil", "tensor", "auto")
INTERPOLATIONS = (InterpolationMode.BICUBIC, InterpolationMode.BILINEAR)
_SOF_FAST = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive Huffman
_SOF_ALL = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # every start-of-frame marker (C4 DHT, C8 JPG, CC DAC)
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


class UnsupportedTransformError(ClipOODError, ValueError):
    """The model's preprocessing is not of the form the tensor decode path reproduces."""


@dataclass(frozen=True)
class TensorTransform:
    """The parameters of an open_clip eval transform (``Resize`` → ``CenterCrop`` → RGB → ``ToTensor`` →
    ``Normalize``), applied to ``uint8`` tensors by :func:`preprocess_batch`."""

    size: int | tuple[int, ...]  # Resize's size: an int resizes the shorter side
    max_size: int | None
    interpolation: InterpolationMode
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _is_rgb_noop(t) -> bool:
    """True for the RGB conversion steps of open_clip's transforms: ``load_rgb`` already returns RGB and the
    tensor decode asks for RGB, so they do nothing here."""
    name = getattr(t, "__name__", type(t).__name__)
    return name == "_convert_to_rgb" or (name == "MaybeConvertMode" and getattr(t, "mode", "RGB") == "RGB")


def tensor_transform(preprocess) -> TensorTransform:
    """The resize / crop / normalisation of ``preprocess`` (a model's ``loaded.preprocess``); raises
    :class:`UnsupportedTransformError` naming the step when it is not ``Resize`` (bilinear or bicubic),
    optional ``CenterCrop``, optional RGB conversion, ``ToTensor``, ``Normalize``."""
    steps = list(getattr(preprocess, "transforms", []))
    fix = "Fix: extract with decode='pil', which applies the model's transform as it is."
    if not isinstance(preprocess, Compose) or len(steps) < 3:
        raise UnsupportedTransformError(f"the tensor decode path needs a torchvision Compose of Resize, CenterCrop, "
                                        f"ToTensor and Normalize; got {preprocess!r}. {fix}")
    resize, *middle, to_tensor, normalize = steps
    crop = None
    if middle and isinstance(middle[0], CenterCrop):
        crop = tuple(middle.pop(0).size)
    bad = [t for t in middle if not _is_rgb_noop(t)]
    if type(resize) is not Resize or resize.interpolation not in INTERPOLATIONS:
        bad.insert(0, resize)
    if not isinstance(to_tensor, ToTensor):
        bad.append(to_tensor)
    if not isinstance(normalize, Normalize):
        bad.append(normalize)
    if bad:
        raise UnsupportedTransformError(
            f"the tensor decode path cannot reproduce {', '.join(repr(b) for b in bad)} of the model's transform "
            f"(it supports Resize with bilinear or bicubic interpolation, CenterCrop, an RGB conversion, ToTensor "
            f"and Normalize). {fix}")
    size = resize.size if isinstance(resize.size, int) else tuple(resize.size)
    return TensorTransform(size, resize.max_size, resize.interpolation, crop,
                           tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std))


def resolve_decode(decode: str, device: torch.device, preprocess) -> str:
    """``"pil"`` or ``"tensor"`` for the option ``decode`` (:data:`DECODES`): ``"auto"`` is ``"tensor"`` on CUDA when
    the transform allows it (:func:`tensor_transform`), else ``"pil"``."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, not {decode!r}")
    if decode == "auto":
        if torch.device(device).type != "cuda":
            return "pil"
        try:
            tensor_transform(preprocess)
        except UnsupportedTransformError as e:
            warnings.warn(f"decode='auto' falls back to PIL: {e}", stacklevel=3)
            return "pil"
        return "tensor"
    if decode == "tensor":
        tensor_transform(preprocess)  # fail now, with the reason, not in a DataLoader worker
    return decode


def decode_id(device: torch.device) -> str:
    """What the feature-cache key records for the tensor path on ``device``: the JPEG decoder differs."""
    return "tensor/nvjpeg" if torch.device(device).type == "cuda" else "tensor/libjpeg-turbo"


def decode_code_hash() -> str:
    """Hash of the code of the tensor path (part of its feature-cache key, besides the extraction code's)."""
    return code_hash(jpeg_fast_path, tensor_transform, _is_rgb_noop, preprocess_batch, decode_jpegs, read_item,
                     decode_items, _resize_like_pil, finish_batch, _pil_pixels)


# ------------------------------------------------------------------------------------------ decode
def jpeg_fast_path(data: bytes) -> bool:
    """True if ``data`` is a JPEG that ``decode_jpeg`` (nvJPEG or libjpeg-turbo) decodes to RGB as PIL does:
    8-bit precision, 3 components (not Adobe RGB-coded), baseline/extended/progressive Huffman frame, ending
    with the end-of-image marker (trailing zero padding allowed). Everything else goes to PIL."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xEE and data[i + 4:i + 9] == b"Adobe" and i + 15 < n and data[i + 15] == 0:
            return False  # Adobe transform 0: RGB-coded (or CMYK) components
        if marker in _SOF_ALL:
            return marker in _SOF_FAST and i + 9 < n and data[i + 4] == 8 and data[i + 9] == 3
        if marker == 0xDA:  # a scan before any frame header
            return False
        i += 2 + length
    return False


def _decode_jpeg(data, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG files given as 1-D ``uint8`` tensors into ``uint8`` (3, H, W) tensors on ``device``, in one
    batched call (nvJPEG on CUDA); if the batch fails, image by image; None for each image that fails alone."""
    if not data:
        return []
    device = torch.device(device)
    try:
        return list(_decode_jpeg(data, device))
    except (RuntimeError, ValueError):  # torchvision's decode errors
        if len(data) == 1:
            return [None]
    out = []
    for d in data:
        try:
            out.append(_decode_jpeg(d, device))
        except (RuntimeError, ValueError):
            out.append(None)
    return out


def _pil_pixels(ds: ImageFolderDataset, i: int) -> torch.Tensor | None:
    """Image ``i`` decoded by the PIL path's ``load_rgb`` (which applies ``on_error``) as ``uint8`` (3, H, W)."""
    im = ds.load_rgb(i)
    if im is None:
        return None
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_item(ds: ImageFolderDataset, i: int) -> torch.Tensor | None:
    """What a DataLoader worker hands on for image ``i``: the file's bytes (1-D ``uint8``) when it is a JPEG for
    ``decode_jpeg`` (:func:`jpeg_fast_path`), else its pixels decoded by PIL (3-D ``uint8``); None when PIL cannot
    decode it and ``on_error="skip"``."""
    path = ds.root / ds.samples[i].path
    try:
        data = path.read_bytes()
    except OSError:
        return _pil_pixels(ds, i)  # the PIL path's error (or skip) for an unreadable file
    if jpeg_fast_path(data):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return _pil_pixels(ds, i)


def decode_items(items: list[torch.Tensor | None], indices: list[int], ds: ImageFolderDataset,
                 device: torch.device) -> list[torch.Tensor | None]:
    """The pixels (``uint8`` (3, H, W) on ``device``) of :func:`read_item`'s ``items`` of images ``indices``: JPEG
    bytes decoded together by :func:`decode_jpegs`; what that cannot decode by PIL (``load_rgb``, ``on_error``)."""
    out = [None if x is None else x.to(device, non_blocking=True) for x in items]
    raw = [j for j, x in enumerate(items) if x is not None and x.ndim == 1]
    for j, pixels in zip(raw, decode_jpegs([items[j] for j in raw], device)):
        if pixels is None:
            pixels = _pil_pixels(ds, indices[j])
            pixels = None if pixels is None else pixels.to(device)
        out[j] = pixels
    return out


# -------------------------------------------------------------------------------------- preprocess
def _resize_like_pil(x: torch.Tensor, t: TensorTransform) -> torch.Tensor:
    """``x`` (B, 3, H, W) float32 in 0..255 resized as PIL's ``Image.resize`` does it: a horizontal then a vertical
    pass, each rounded half up (PIL adds 0.5 before its fixed-point shift; ``torch.round`` would round half to
    even) and clamped to 8 bits (so a bicubic overshoot at an edge is clipped between the passes)."""
    h, w = x.shape[-2:]
    size = [t.size] if isinstance(t.size, int) else list(t.size)
    oh, ow = _compute_resized_output_size((h, w), size, t.max_size)  # the function Resize uses for PIL images
    for shape in ([h, ow], [oh, ow]):
        if list(x.shape[-2:]) != shape:
            x = TF.resize(x, shape, interpolation=t.interpolation, antialias=True).add_(0.5).floor_().clamp_(0, 255)
    return x


def preprocess_batch(images: list[torch.Tensor], t: TensorTransform) -> torch.Tensor:
    """The model input (B, 3, h, w) float32 of ``uint8`` (3, H, W) ``images`` (any sizes, all on one device).

    Images of one size are resized together (:func:`_resize_like_pil`, see the module docstring), then centre
    crop (zero padding when the crop is larger), ``/ 255``, ``Normalize``."""
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    groups: dict[tuple[int, int], list[int]] = {}
    for j, im in enumerate(images):
        if im.dtype != torch.uint8 or im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"image {j} must be a uint8 (3, H, W) tensor, not {im.dtype} {tuple(im.shape)}")
        groups.setdefault(tuple(im.shape[1:]), []).append(j)
    out: list[torch.Tensor | None] = [None] * len(images)
    for rows in groups.values():
        x = _resize_like_pil(torch.stack([images[j] for j in rows]).float(), t)
        if t.crop is not None:
            x = TF.center_crop(x, list(t.crop))
        for j, y in zip(rows, x):
            out[j] = y
    x = torch.stack(out).div_(255)
    return TF.normalize(x, list(t.mean), list(t.std))


def finish_batch(batch, ds: ImageFolderDataset, t: TensorTransform, device: torch.device):
    """``(images, labels, indices, failed)`` as :func:`~helpers.data.collate_skip` returns them, from a list of
    ``(item, label, index)`` (:func:`read_item`) or from the lists of :func:`collate_items`: decoded and
    preprocessed on ``device``; images that cannot be decoded are in ``failed`` (with ``on_error="skip"``)."""
    items, labels, indices, failed = batch if isinstance(batch, tuple) else collate_items(batch)
    pixels = decode_items(items, indices, ds, device)
    good = [j for j, p in enumerate(pixels) if p is not None]
    failed = failed + [indices[j] for j, p in enumerate(pixels) if p is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failed
    images = preprocess_batch([pixels[j] for j in good], t)
    return (images, torch.tensor([labels[j] for j in good], dtype=torch.long),
            torch.tensor([indices[j] for j in good], dtype=torch.long), failed)


def collate_items(batch):
    """``(items, labels, indices, failed)`` lists of a batch of ``(item, label, index)``; items that PIL already
    failed to decode (None) go to ``failed``."""
    kept = [b for b in batch if b[0] is not None]
    return [b[0] for b in kept], [b[1] for b in kept], [b[2] for b in kept], [b[2] for b in batch if b[0] is None]


class RawImages(torch.utils.data.Dataset):
    """``ds`` as DataLoader workers see it on the tensor path: ``(read_item(ds, i), label, i)``."""

    def __init__(self, ds: ImageFolderDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return read_item(self.ds, i), self.ds.samples[i].label, i


def tensor_loader(ds: ImageFolderDataset, preprocess, device: torch.device, batches: list[list[int]],
                  num_workers: int):
    """A DataLoader over ``batches`` of ``ds`` for the tensor path, and the function that finishes each batch in
    the main process (None on the CPU). On the CPU the workers decode (libjpeg-turbo) and preprocess, as they do
    on the PIL path; on CUDA they read files (and decode the PIL fallbacks) and the main process decodes the
    batch with nvJPEG and preprocesses it on the GPU. Both run :func:`finish_batch`."""
    t = tensor_transform(preprocess)
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    collate = collate_items if on_gpu else functools.partial(finish_batch, ds=ds, t=t, device=torch.device("cpu"))
    loader = torch.utils.data.DataLoader(RawImages(ds), batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate, persistent_workers=False, pin_memory=False)
    return loader, (functools.partial(finish_batch, ds=ds, t=t, device=device) if on_gpu else None)
