"""Image decoding: 16-bit images scaled (not clipped), transparency composited on white, decode errors that
read well, and the warning when a pocket CLIP is asked about classes it never saw."""

import warnings

import numpy as np
import pytest
from PIL import Image

from helpers.data import get_dataset
from helpers.errors import CorruptImageError


def _folder(tmp_path, images: dict) -> str:
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    for name, im in images.items():
        im.save(root / "a" / name)
    return str(root)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 50000]], dtype=np.uint16)
    im = Image.fromarray(values)  # mode I;16
    ds = get_dataset(_folder(tmp_path, {"x.png": im}))
    with Image.open(ds.root / ds.paths[0]) as raw:
        assert raw.mode.startswith("I")  # Pillow reads a 16-bit PNG as a 16/32-bit integer image
    rgb = np.asarray(ds.load_rgb(0))
    assert rgb.shape == (2, 3, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))  # 0, 1, 128, 255, 4, 195
    assert (rgb == 255).mean() < 0.5  # PIL's convert("RGB") makes every value > 255 white


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent red: the background shows
    rgba[0, 2] = [0, 0, 255, 128]  # half-transparent blue over white
    la = np.array([[[0, 0], [0, 255]]], np.uint8)  # gray + alpha: transparent black, opaque black
    ds = get_dataset(_folder(tmp_path, {"x.png": Image.fromarray(rgba, "RGBA"), "y.png": Image.fromarray(la, "LA")}))
    rgb = np.asarray(ds.load_rgb(0)).astype(int)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert abs(rgb[0, 2, 0] - 127) <= 1 and rgb[0, 2, 2] == 255  # 50% blue over white
    assert np.asarray(ds.load_rgb(1))[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_corrupt_image_error_names_the_file_and_the_fix(tmp_path):
    root = tmp_path / "bad" / "a"
    root.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "ok.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = get_dataset(str(tmp_path / "bad"))
    with pytest.raises(CorruptImageError) as e:
        ds.load_rgb(ds.paths.index("a/broken.jpg"))
    msg = str(e.value)
    assert "broken.jpg" in msg and "on_error='skip'" in msg and "--set on_error=skip" in msg and ".." not in msg
    assert get_dataset(str(tmp_path / "bad"), on_error="skip").load_rgb(0) is None


def test_pocket_clip_warns_about_class_names_it_never_saw(smoke_model):
    from helpers.benchmark import warn_unknown_classes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unknown_classes(smoke_model, ["cat", "dog", "truck"]) == []
    with pytest.warns(UserWarning, match=r"2 of the 3 ID classes are unknown .*tench, church.*chance \(33%\)"):
        assert warn_unknown_classes(smoke_model, ["tench", "dog", "church"]) == ["tench", "church"]
    smoke_model_info = dict(smoke_model.info)
    try:
        smoke_model.info = {}  # a published CLIP has an open vocabulary: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert warn_unknown_classes(smoke_model, ["tench"]) == []
    finally:
        smoke_model.info = smoke_model_info
