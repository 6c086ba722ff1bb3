"""Preparation from the official sources (needs internet, or the original archives on disk).

Each function writes the ImageFolder layout that :mod:`helpers.data.registry` expects under the data
folder. They are the researcher's path; the offline path is :mod:`helpers.data.mirror`.

=================  ===========================================  =====================================
dataset            official source                              layout written
=================  ===========================================  =====================================
cifar10-*          torchvision ``CIFAR10`` (python pickles)     ``cifar10/{train,test}/<class>/NNNN.png``
dtd10 / textures   VGG DTD r1.0.1 tarball                       ``dtd10/<class>/``, ``ood/dtd/images/<class>/``
mnist, fashion     torchvision ``MNIST`` / ``FashionMNIST``     ``mnist/<digit>/``, ``fashion-mnist-test/<class>/``
tiny-imagenet-*    cs231n ``tiny-imagenet-200.zip``             ``tinyimagenet-val/<wnid>/`` + classes.tsv
imagenet-val       ILSVRC2012 val tar + devkit (login needed)   ``imagenet/val/<wnid>/`` (torchvision ``ImageNet``)
inaturalist etc.   MOS subsets (Huang & Li, CVPR 2021)           ``ood/{iNaturalist,SUN,Places}/images/``
ninco              Zenodo record 8013288                        ``ood/NINCO/NINCO_OOD_classes/<class>/``
imagenet-o         Hendrycks et al. 2021                        ``ood/imagenet-o/<wnid>/``
=================  ===========================================  =====================================
"""

from __future__ import annotations

import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from ..paths import data_dir

MOS_URLS = {  # from deeplearning-wisc/large_scale_ood README
    "inaturalist": "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/iNaturalist.tar.gz",
    "sun": "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/SUN.tar.gz",
    "places": "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/Places.tar.gz",
}
DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
NINCO_URL = "https://zenodo.org/record/8013288/files/NINCO_all.tar.gz"
IMAGENET_O_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-o.tar"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def download(url: str, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / url.rsplit("/", 1)[-1]
    if not dest.exists():
        tmp = dest.with_suffix(dest.suffix + ".part")
        print(f"[data] downloading {url}", flush=True)
        with urllib.request.urlopen(url) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        tmp.rename(dest)
    return dest


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")


def _export_torchvision(ds, out: Path, class_names: list[str]) -> None:
    counters: dict[int, int] = {}
    for img, y in ds:
        k = counters.get(y, 0)
        counters[y] = k + 1
        d = out / class_names[y]
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{k:05d}.png")


def prepare_cifar10(download_dir: Path, data: Path | None = None) -> None:
    from torchvision.datasets import CIFAR10

    data = data or data_dir()
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(download_dir, train=train, download=True)
        _export_torchvision(ds, data / "cifar10" / split, ds.classes)


def prepare_mnist(download_dir: Path, data: Path | None = None) -> None:
    from torchvision.datasets import MNIST, FashionMNIST

    data = data or data_dir()
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    m = MNIST(download_dir, train=False, download=True)
    _export_torchvision(m, data / "mnist", [str(i) for i in range(10)])
    (data / "mnist" / "classes.tsv").write_text("".join(f"{i}\t{w}\n" for i, w in enumerate(words)))
    f = FashionMNIST(download_dir, train=False, download=True)
    folders = [c.lower().replace("/", "_").replace(" ", "_") for c in f.classes]
    _export_torchvision(f, data / "fashion-mnist-test", folders)
    (data / "fashion-mnist-test" / "classes.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in zip(folders, f.classes)))


def prepare_dtd(download_dir: Path, data: Path | None = None, first_classes: int = 10) -> None:
    """Full DTD as ``textures`` and its first ``first_classes`` classes (sorted) as ``dtd10``."""
    data = data or data_dir()
    _extract(download(DTD_URL, download_dir), download_dir)
    images = download_dir / "dtd" / "images"
    shutil.copytree(images, data / "ood" / "dtd" / "images", dirs_exist_ok=True)
    for c in sorted(p.name for p in images.iterdir() if p.is_dir())[:first_classes]:
        shutil.copytree(images / c, data / "dtd10" / c, dirs_exist_ok=True)


def prepare_tiny_imagenet(download_dir: Path, data: Path | None = None) -> None:
    data = data or data_dir()
    _extract(download(TINY_IMAGENET_URL, download_dir), download_dir)
    src = download_dir / "tiny-imagenet-200"
    out = data / "tinyimagenet-val"
    words = dict(line.split("\t", 1) for line in (src / "words.txt").read_text().splitlines())
    wnids = (src / "wnids.txt").read_text().split()
    for line in (src / "val" / "val_annotations.txt").read_text().splitlines():
        fname, wnid = line.split("\t")[:2]
        (out / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "val" / "images" / fname, out / wnid / fname)
    (out / "classes.tsv").write_text("".join(f"{w}\t{words[w]}\n" for w in sorted(wnids)))


def prepare_imagenet_val(download_dir: Path, data: Path | None = None) -> None:
    """Needs ``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz`` in ``download_dir`` (ImageNet
    requires a login, so they are not downloaded here)."""
    from torchvision.datasets import ImageNet

    data = data or data_dir()
    ImageNet(str(download_dir), split="val")  # parses the devkit and sorts val images into wnid folders
    shutil.copytree(download_dir / "val", data / "imagenet" / "val", dirs_exist_ok=True)


def prepare_mos(name: str, download_dir: Path, data: Path | None = None) -> None:
    data = data or data_dir()
    _extract(download(MOS_URLS[name], download_dir), data / "ood")


def prepare_ninco(download_dir: Path, data: Path | None = None) -> None:
    data = data or data_dir()
    _extract(download(NINCO_URL, download_dir), data / "ood")


def prepare_imagenet_o(download_dir: Path, data: Path | None = None) -> None:
    data = data or data_dir()
    _extract(download(IMAGENET_O_URL, download_dir), data / "ood")


PREPARERS = {
    "cifar10": prepare_cifar10, "mnist": prepare_mnist, "dtd": prepare_dtd, "tiny-imagenet": prepare_tiny_imagenet,
    "imagenet-val": prepare_imagenet_val, "ninco": prepare_ninco, "imagenet-o": prepare_imagenet_o,
    **{k: (lambda d, data=None, _k=k: prepare_mos(_k, d, data)) for k in MOS_URLS},
}
