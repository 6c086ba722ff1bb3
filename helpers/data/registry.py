"""The dataset registry: what each dataset is, where it lives under the data folder, and where it comes from.

Every dataset is an ImageFolder tree ``<data>/<root>/<class>/<image>`` (a folder of images with no
class sub-folders is one class). Besides the registered names, any ImageFolder directory is a
dataset: pass its path to :func:`helpers.data.get_dataset`.

Teaching benchmark (the default of the series): ID = CIFAR-10 test; OOD = DTD-10, MNIST,
Fashion-MNIST and Tiny-ImageNet-val with the classes removed whose concept overlaps a CIFAR-10
class (:data:`TINY_IMAGENET_CIFAR10_OVERLAP`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Holdout:
    """A deterministic per-class split of a dataset: ``per_class`` images of each class (chosen with
    ``seed``) form the ``probe`` part, the rest the ``pretrain`` part."""

    part: str  # "pretrain" | "probe"
    per_class: int
    seed: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str  # folder under the data dir holding <class>/<image>
    role: str  # "id" (test), "train", "ood", "sample"
    archive: str | None = None  # mirror archive that provides it
    class_names: str = "folders"  # "folders" | "tsv" (classes.tsv next to the classes) | "imagenet"
    exclude: tuple[str, ...] = ()  # class folders left out
    holdout: Holdout | None = None
    source: str = ""  # official source (see helpers.data.sources)
    description: str = ""


# Tiny-ImageNet classes whose concept is a CIFAR-10 class (or a kind of it). Removing them turns
# Tiny-ImageNet-val into a near-OOD set for a CIFAR-10 ID set. Kept on purpose although visually close:
# gazelle, bighorn, ox, bison (not deer or horses), go-kart, tractor, school bus, trolleybus, freight car,
# bullet train (not CIFAR's automobile/truck concepts), projectile (not an airplane).
TINY_IMAGENET_CIFAR10_OVERLAP: dict[str, tuple[str, ...]] = {
    "automobile": ("n02814533", "n03100240", "n03670208", "n04285008"),  # beach wagon, convertible, limousine, sports car
    "truck": ("n03796401", "n03977966"),  # moving van, police van
    "bird": ("n01855672", "n02002724", "n02056570", "n02058221"),  # goose, black stork, king penguin, albatross
    "cat": ("n02123045", "n02123394", "n02124075", "n02125311", "n02129165"),  # tabby, Persian, Egyptian, cougar, lion
    "dog": ("n02085620", "n02094433", "n02099601", "n02099712", "n02106662", "n02113799"),  # six breeds
    "frog": ("n01641577", "n01644900"),  # bullfrog, tailed frog
    "ship": ("n03447447", "n03662601"),  # gondola, lifeboat
}
TINY_IMAGENET_OVERLAP_WNIDS: tuple[str, ...] = tuple(w for ws in TINY_IMAGENET_CIFAR10_OVERLAP.values() for w in ws)

CIFAR10_PROBE_PER_CLASS = 500  # held out of CIFAR-10 train: never seen by the pocket CLIP's pretraining

_MOS = "https://github.com/deeplearning-wisc/large_scale_ood#out-of-distribution-dataset"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        # ---- teaching benchmark (mirrored) ----
        DatasetSpec("cifar10-train", "cifar10/train", "train", "cifar10.tar.gz",
                    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    description="CIFAR-10 train split, 50,000 images, 10 classes"),
        DatasetSpec("cifar10-pretrain", "cifar10/train", "train", "cifar10.tar.gz",
                    holdout=Holdout("pretrain", CIFAR10_PROBE_PER_CLASS),
                    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    description="CIFAR-10 train minus the held-out probe part: the pocket CLIP's pretraining images"),
        DatasetSpec("cifar10-probe", "cifar10/train", "train", "cifar10.tar.gz",
                    holdout=Holdout("probe", CIFAR10_PROBE_PER_CLASS),
                    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    description="500 CIFAR-10 train images per class held out of pretraining, for probes and fine-tuning"),
        DatasetSpec("cifar10-test", "cifar10/test", "id", "cifar10.tar.gz",
                    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    description="CIFAR-10 test split, 10,000 images: the teaching ID set"),
        DatasetSpec("dtd10", "dtd10", "ood", "dtd10.tar.gz",
                    source="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                    description="Describable Textures, first 10 of 47 classes, 1,200 images: texture OOD"),
        DatasetSpec("mnist", "mnist", "ood", "mnist.tar.gz", class_names="tsv",
                    source="https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision.datasets.MNIST)",
                    description="10,000 MNIST digits: far OOD"),
        DatasetSpec("fashion-mnist", "fashion-mnist-test", "ood", "fashion-mnist-test.tar.gz", class_names="tsv",
                    source="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (torchvision.datasets.FashionMNIST)",
                    description="Fashion-MNIST test split, 10,000 images: far OOD"),
        DatasetSpec("tiny-imagenet-val", "tinyimagenet-val", "ood", "tinyimagenet-val.tar.gz", class_names="tsv",
                    source="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                    description="Tiny-ImageNet validation split, 200 classes x 50 images (includes CIFAR-10 concepts)"),
        DatasetSpec("tiny-imagenet-near", "tinyimagenet-val", "ood", "tinyimagenet-val.tar.gz", class_names="tsv",
                    exclude=TINY_IMAGENET_OVERLAP_WNIDS,
                    source="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                    description="Tiny-ImageNet-val minus the 25 classes that overlap CIFAR-10 concepts: near OOD"),
        DatasetSpec("imagenet-sample", "imagenet-sample", "sample", "imagenet-sample.tar.gz", class_names="imagenet",
                    source="https://github.com/EliSchwartz/imagenet-sample-images",
                    description="One ImageNet-1k image per class: exercises the ImageNet path end to end"),
        # ---- published ImageNet protocol (prepared from official sources; not mirrored here) ----
        DatasetSpec("imagenet-val", "imagenet/val", "id", class_names="imagenet",
                    source="https://image-net.org/challenges/LSVRC/2012/ (ILSVRC2012_img_val.tar + devkit)",
                    description="ImageNet-1k validation, 50,000 images, 1,000 classes"),
        DatasetSpec("imagenet-train", "imagenet/train", "train", class_names="imagenet",
                    source="https://image-net.org/challenges/LSVRC/2012/ (ILSVRC2012_img_train.tar)",
                    description="ImageNet-1k train (probes, few-shot splits)"),
        DatasetSpec("inaturalist", "ood/iNaturalist", "ood", source=_MOS,
                    description="iNaturalist OOD subset of MOS (10,000 images, 110 plant classes disjoint from ImageNet)"),
        DatasetSpec("sun", "ood/SUN", "ood", source=_MOS, description="SUN OOD subset of MOS (10,000 images)"),
        DatasetSpec("places", "ood/Places", "ood", source=_MOS, description="Places OOD subset of MOS (10,000 images)"),
        DatasetSpec("textures", "ood/dtd/images", "ood",
                    source="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                    description="Describable Textures, all 5,640 images (the MCM/MOS 'Textures' set)"),
        DatasetSpec("ninco", "ood/NINCO/NINCO_OOD_classes", "ood",
                    source="https://zenodo.org/record/8013288/files/NINCO_all.tar.gz",
                    description="NINCO: 64 OOD classes, 5,879 images, checked free of ImageNet-1k objects"),
        DatasetSpec("imagenet-o", "ood/imagenet-o", "ood",
                    source="https://people.eecs.berkeley.edu/~hendrycks/imagenet-o.tar",
                    description="ImageNet-O: 2,000 adversarially filtered OOD images"),
    ]
}

TEACHING_ID = "cifar10-test"
TEACHING_OOD = ("dtd10", "mnist", "fashion-mnist", "tiny-imagenet-near")
PAPER_ID = "imagenet-val"
PAPER_OOD = ("inaturalist", "sun", "places", "textures", "ninco", "imagenet-o")
