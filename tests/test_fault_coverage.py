"""Faults that a fault-injection pass found handled well, kept covered where no other test pins them down (issue 20,
"Faults that now pass: keep them passing"): processes killed by SIGKILL (feature extraction, mirror import), what
a loader must never unpickle, names with typos, transparent palette PNGs on the decode path, and mirror folders
missing a file. Everything runs on tiny synthetic inputs and a random-weight pocket ViT (no training)."""

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from hooks import count_extracted
from PIL import Image

from helpers.cache import file_record
from helpers.data import get_dataset, import_from_mirror
from helpers.errors import ClipOODError, MirrorError, UnknownDatasetError
from helpers.features import cache_path, extract_features
from helpers.io import sha256_file
from helpers.models import load_model
from helpers.paths import REPO_ROOT

KINDS = ("image", "preproj", "local")
FAST = dict(chunk_size=4, batch_size=2, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def vit():
    """Seeded random weights: the same model in this process and in a child process, with no checkpoint."""
    return load_model("pocket-vit-xs", "random")


def _noise_folder(root, classes=("a", "b"), per_class=9, size=8):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def _child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------- SIGKILL mid-extraction
KILLED_EXTRACTION = """
import io, os, signal, sys
import numpy as np, torch
import helpers.features as hf
from helpers.data import get_dataset
from helpers.models import load_model

torch.set_num_threads(int(sys.argv[2]))
real_savez, calls = np.savez, []

def savez(file, **arrays):  # the chunk writer's own call: the third chunk dies half-way, no cleanup runs
    calls.append(1)
    if len(calls) == 3:
        buf = io.BytesIO()
        real_savez(buf, **arrays)
        file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_savez(file, **arrays)

np.savez = savez
hf.extract_features(load_model("pocket-vit-xs", "random"), get_dataset(sys.argv[1]),
                    kinds=("image", "preproj", "local"), chunk_size=4, batch_size=2, num_workers=0, progress=False)
"""


def test_extraction_killed_by_sigkill_resumes_bit_identical(vit, tmp_path, tmp_cache, monkeypatch):
    """Guards: chunks reach their final name only by atomic rename (a killed write leaves a hidden temporary file,
    never a half chunk under a chunk name), meta.json is written last, a rerun keeps the chunks on disk and computes
    only the missing ones, and the merge ignores (and removes) the leftovers."""
    ds = get_dataset(str(_noise_folder(tmp_path / "imgs")))  # 18 images: chunks of 4, 4, 4, 4, 2
    full = extract_features(vit, ds, kinds=KINDS, use_cache=False, **FAST)
    folder = cache_path(full.meta["key"])
    shutil.rmtree(folder)

    done = _child(KILLED_EXTRACTION, str(ds.root), str(torch.get_num_threads()))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    names = sorted(p.name for p in (folder / "parts").iterdir())
    visible = [n for n in names if not n.startswith(".")]
    assert visible == ["chunk4-000000.npz", "chunk4-000001.npz"], names
    assert len(names) == 3 and names[0].startswith(".chunk4-000002.npz.")  # the write the kill cut short
    assert not (folder / "meta.json").exists()

    calls = count_extracted(monkeypatch)
    resumed = extract_features(vit, ds, kinds=KINDS, **FAST)
    assert sum(calls) == len(ds) - 8  # the two chunks written before the kill are reused
    assert not resumed.meta["from_cache"] and resumed.paths == full.paths
    for k in (*KINDS, "labels"):
        np.testing.assert_array_equal(getattr(resumed, k), getattr(full, k))  # bit-identical
    assert not (folder / "parts").exists()  # the killed write's temporary file went with the parts
    assert extract_features(vit, ds, kinds=KINDS, **FAST).meta["from_cache"]


# ------------------------------------------------------------------------------ SIGKILL mid-import
KILLED_IMPORT = """
import os, signal, sys, tarfile
from helpers.data import import_from_mirror

real = tarfile.TarFile.extractall

def extract_half(self, path, *args, **kwargs):
    members = self.getmembers()
    real(self, path, members=members[: len(members) // 2], filter="data")
    os.kill(os.getpid(), signal.SIGKILL)

tarfile.TarFile.extractall = extract_half
import_from_mirror(sys.argv[1], data=sys.argv[2], progress=False)
"""


def _mirror(tmp_path):
    src = _noise_folder(tmp_path / "src" / "toy", per_class=3)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "toy.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="toy")
    (mirror / "SHA256SUMS").write_text(f"{sha256_file(mirror / 'toy.tar.gz')}  toy.tar.gz\n")
    return src, mirror


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and p.name != ".source.json"}


def test_mirror_import_killed_by_sigkill_is_cleaned_up_and_redone(tmp_path, capsys):
    """Guards: an import unpacks into a hidden ``.import-<top>.pid<N>-`` folder (the real tree never holds half an
    archive), and the next import removes the folder of the dead process, says so, and imports the whole tree."""
    src, mirror = _mirror(tmp_path)
    data = tmp_path / "data"
    done = _child(KILLED_IMPORT, str(mirror), str(data))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (left,) = [p for p in data.iterdir()]
    assert left.name.startswith(".import-toy.pid") and not (data / "toy").exists()
    assert 0 < len(_tree(left)) < len(_tree(src))  # killed midway: part of the archive was unpacked

    target = import_from_mirror(mirror, data=data, progress=True)["toy.tar.gz"]
    out = capsys.readouterr().out
    assert "interrupted import" in out and left.name in out
    assert [p.name for p in data.iterdir()] == ["toy"]
    assert _tree(target) == _tree(src) and len(_tree(src)) == 6
    assert json.loads((target / ".source.json").read_text())["archive"] == "toy.tar.gz"


def test_mirror_without_its_checksum_file_or_archive_entry(tmp_path):
    """Guards ``read_checksums`` (no SHA256SUMS) and the archive-name check of ``import_from_mirror``."""
    src, mirror = _mirror(tmp_path)
    sums = (mirror / "SHA256SUMS").read_text()
    (mirror / "SHA256SUMS").unlink()
    with pytest.raises(MirrorError, match=r"SHA256SUMS is missing: a mirror folder must list"):
        import_from_mirror(mirror, data=tmp_path / "data", progress=False)
    (mirror / "SHA256SUMS").write_text(sums)
    with pytest.raises(MirrorError, match=r"\['toi.tar.gz'\] not listed in .*SHA256SUMS \(listed: \['toy.tar.gz'\]\)"):
        import_from_mirror(mirror, archives=["toi.tar.gz"], data=tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()  # nothing was created before the check


# ------------------------------------------------------------------------------- nothing is unpickled
class Payload:
    """Unpickling it creates the file named by ``Payload.target``."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_torch_format_checkpoint_with_a_payload_is_refused(tmp_path, monkeypatch):
    """Guards ``weights_only=True`` for checkpoints in torch's own zip format (what ``torch.save`` writes), named
    by the spec string as well as by ``pretrained``: loading refuses the object and runs none of its code."""
    monkeypatch.setattr(Payload, "target", str(tmp_path / "pwned"))
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "extra": Payload()}, bad)
    for spec, pretrained in (("pocket-vit-xs", str(bad)), (f"pocket-vit-xs/{bad}", None)):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load_model(spec, pretrained)
    assert not (tmp_path / "pwned").exists()


def test_feature_cache_with_a_pickled_array_is_rebuilt_without_unpickling(vit, tmp_path, tmp_cache, monkeypatch):
    """Guards the feature cache's loader (``np.load`` without pickles): an object array planted in a cache, with a
    meta.json that vouches for it, is refused and rebuilt; its payload never runs."""
    monkeypatch.setattr(Payload, "target", str(tmp_path / "pwned"))
    ds = get_dataset(str(_noise_folder(tmp_path / "imgs", per_class=2)))
    a = extract_features(vit, ds, kinds=("image",), **FAST)
    folder = cache_path(a.meta["key"])
    planted = np.empty(len(ds), dtype=object)
    planted[:] = [Payload() for _ in range(len(ds))]
    np.save(folder / "image.npy", planted, allow_pickle=True)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["image.npy"] = file_record(folder / "image.npy")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"feature cache .* is damaged or stale"):
        b = extract_features(vit, ds, kinds=("image",), **FAST)
    assert not (tmp_path / "pwned").exists()
    assert not b.meta["from_cache"] and b.image.dtype == np.float32
    np.testing.assert_array_equal(b.image, a.image)


# --------------------------------------------------------------------------------------- typos in names
@pytest.mark.parametrize("typo, meant", [("cifar10-tset", "cifar10-test"), ("fashion_mnist", "fashion-mnist"),
                                         ("imagenet-vall", "imagenet-val")])
def test_dataset_typo_names_the_registered_dataset(typo, meant):
    """Guards the did-you-mean of ``helpers.data.resolve``: the hint names the dataset meant, first."""
    with pytest.raises(UnknownDatasetError) as e:
        get_dataset(typo)
    msg = str(e.value)
    assert isinstance(e.value, ClipOODError) and isinstance(e.value, KeyError)
    assert msg.startswith(f"Unknown dataset {typo!r} (did you mean [{meant!r}")  # readable: not KeyError's quoting
    assert "or pass the path of an ImageFolder directory" in msg


@pytest.mark.parametrize("typo, meant", [("mmc", "mcm"), ("gl-mcm", "gl_mcm"), ("neglable", "neglabel"),
                                         ("mahalanobiss", "mahalanobis")])
def test_detector_typo_names_the_registered_detector(typo, meant):
    """Guards the did-you-mean of ``detectors.get``: the hint names the detector meant, first, and the message
    lists what is registered."""
    from helpers import detectors

    with pytest.raises(detectors.UnknownDetectorError) as e:
        detectors.get(typo)
    msg = str(e.value)
    assert isinstance(e.value, ClipOODError)
    assert msg.startswith(f"unknown detector {typo!r} (did you mean [{meant!r}")
    assert "registered: [" in msg and "or give 'module:Class'" in msg
    with pytest.raises(detectors.UnknownDetectorError, match=rf"did you mean \[{meant!r}"):
        detectors.get({"name": typo, "T": 1})  # a notebook parameter's dict form goes the same way


# ------------------------------------------------------------------------------ PNGs on the decode path
def test_palette_png_with_a_transparent_colour_is_composited_on_white(tmp_path):
    """Guards the palette branch of ``to_rgb`` (``P`` with ``transparency``), which the RGBA/LA test does not reach:
    the transparent colour becomes white, not the palette's colour."""
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    (tmp_path / "set" / "a").mkdir(parents=True)
    im.save(tmp_path / "set" / "a" / "p.png", transparency=0)
    ds = get_dataset(str(tmp_path / "set"))
    with Image.open(ds.root / ds.paths[0]) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 0
    assert np.asarray(ds.load_rgb(0))[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_tensor_decode_path_reads_16_bit_and_transparent_pngs_like_pil(tmp_path):
    """Guards ``decode.read_item``: PNGs (not JPEG bytes) are decoded through ``load_rgb``, so the tensor path keeps
    the 16-bit scaling and the compositing on white (a plain ``decode_png``/``convert`` would clip or drop alpha)."""
    from helpers.decode import read_item

    root = tmp_path / "set" / "a"
    root.mkdir(parents=True)
    Image.fromarray(np.array([[0, 257, 32896], [65535, 1000, 50000]], dtype=np.uint16)).save(root / "deep.png")
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [0, 128, 0, 255]
    rgba[0, 1] = [0, 128, 0, 0]
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    ds = get_dataset(str(tmp_path / "set"))
    for i in range(len(ds)):
        pixels = read_item(ds, i)
        assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
        np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), np.asarray(ds.load_rgb(i)))
    deep = read_item(ds, ds.paths.index("a/deep.png"))[0].numpy()
    assert deep.tolist() == [[0, 1, 128], [255, 4, 195]]  # scaled by 1/257, not clipped to 255
    alpha = read_item(ds, ds.paths.index("a/alpha.png")).permute(1, 2, 0).numpy()
    assert alpha.tolist() == [[[0, 128, 0], [255, 255, 255]]]

