"""The benchmark every notebook starts from: one model, an ID test set, OOD sets and optionally an ID training
split, as cached features."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import DATASETS, ImageFolderDataset, as_dataset_list, get_dataset
from .features import Features, extract_features
from .models import LoadedModel, load_model


@dataclass
class Benchmark:
    model: LoadedModel
    id_name: str
    id: Features
    ood: dict[str, Features]
    datasets: dict[str, ImageFolderDataset] = field(default_factory=dict)
    train: Features | None = None  # labelled ID training split (probes, kNN bank, Mahalanobis)

    @property
    def class_names(self) -> list[str]:
        return self.id.class_names

    def sets(self) -> dict[str, Features]:
        """The ID set and the OOD sets, ID first."""
        return {self.id_name: self.id, **self.ood}

    def describe(self) -> pd.DataFrame:
        """One row per set: role, images, classes and the registry's description (or the folder)."""
        return pd.DataFrame([{"dataset": n, "role": "ID" if n == self.id_name else "OOD", "images": len(f),
                              "classes": len(f.classes),
                              "description": DATASETS[n].description if n in DATASETS else str(self.datasets[n].root)}
                             for n, f in self.sets().items()])

    def feature_table(self) -> pd.DataFrame:
        """One row per set: the shape of each feature kind, whether it came from the cache, extraction speed."""
        return pd.DataFrame([{"dataset": n, **{k: "x".join(map(str, getattr(f, k).shape)) for k in _kinds(f)},
                              "from cache": f.meta.get("from_cache"),
                              "extraction images/s": f.meta.get("images_per_second")}
                             for n, f in self.sets().items()])

    def subset(self, max_images: int | None, seed: int = 0) -> Benchmark:
        """At most ``max_images`` of the ID set and of each OOD set (drawn uniformly with ``seed``); the training
        split is kept. Every method evaluated on the result sees the same images."""
        if max_images is None:
            return self
        if max_images < 1:
            raise ValueError(f"max_images must be positive or None, not {max_images}")

        def rows(f: Features) -> np.ndarray:
            if len(f) <= max_images:
                return np.arange(len(f))
            return np.sort(np.random.default_rng(seed).choice(len(f), max_images, replace=False))

        def ds_rows(name: str, f: Features, r: np.ndarray) -> ImageFolderDataset:
            ds = self.datasets[name]
            where = {p: i for i, p in enumerate(ds.paths)}
            return ds.subset([where[f.paths[i]] for i in r])

        sets = self.sets()
        picked = {n: rows(f) for n, f in sets.items()}
        return dataclasses.replace(
            self, id=self.id.subset(picked[self.id_name]),
            ood={n: f.subset(picked[n]) for n, f in self.ood.items()},
            datasets={n: ds_rows(n, f, picked[n]) for n, f in sets.items() if n in self.datasets})

    def with_model(self, model: LoadedModel, **extract) -> Benchmark:
        """The same images under ``model``: features reused when its image tower is this benchmark's
        (``model.image_id`` unchanged, e.g. learned prompts), else extracted (and cached) from the datasets
        (``extract``: :func:`helpers.features.extract_features` options). A new image tower drops the training
        split, whose features belong to the old one."""
        if model.image_id == self.model.image_id:
            return dataclasses.replace(self, model=model)
        feats = {n: extract_features(model, ds, **{"kinds": _kinds(self.id), "progress": False, **extract})
                 for n, ds in self.datasets.items()}
        return dataclasses.replace(self, model=model, id=feats.pop(self.id_name), ood=feats, train=None)


def _kinds(f: Features) -> tuple[str, ...]:
    return tuple(k for k in ("image", "preproj", "local") if getattr(f, k) is not None)


def warn_unknown_classes(loaded: LoadedModel, class_names: list[str]) -> list[str]:
    """A pocket CLIP only knows the class names of its pretraining captions: warn (and return them) when ID
    classes are outside them, because its zero-shot classifier is then near chance for those classes. A pocket
    checkpoint loaded by path without its training report (``train.json``) cannot be checked: that is said."""
    known = loaded.info.get("class_names")
    if not known and loaded.info.get("train_info_missing"):
        warnings.warn(f"{loaded.name}: the checkpoint {loaded.pretrained} has no train.json beside it: cannot check "
                      f"whether it saw the ID classes ({', '.join(class_names[:5])}"
                      f"{', ...' if len(class_names) > 5 else ''}); a pocket CLIP knows only the class names of its "
                      f"pretraining captions and is near chance on others. Fix: copy train.json from the folder it "
                      f"was trained in (`python -m helpers.models.pocket --where --config <name>`) next to the "
                      f"checkpoint file", stacklevel=3)
    if not known:
        return []  # a published CLIP: an open vocabulary
    unknown = [c for c in class_names if c not in set(known)]
    if unknown:
        warnings.warn(f"{loaded.name} was pretrained on captions of {len(known)} classes ({', '.join(known[:10])}"
                      f"{', ...' if len(known) > 10 else ''}); {len(unknown)} of the {len(class_names)} ID classes are "
                      f"unknown to its text tower ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}), "
                      f"so its zero-shot classifier (and MCM, NegLabel, PLP's pseudo-labels) will be near chance "
                      f"({100 / len(class_names):.0f}%) for them. Fix: a published CLIP (--set "
                      f"model=ViT-B-16/openai) or ID classes it knows", stacklevel=3)
    return unknown


def load_benchmark(model: str | LoadedModel, id_dataset: str | ImageFolderDataset,
                   ood_datasets: list[str | ImageFolderDataset], *, train_dataset: str | ImageFolderDataset | None = None,
                   kinds=("image", "preproj"), train_kinds=None, max_per_class: int | None = None,
                   ood_max_per_class: int | None = None, train_max_per_class: int | None = None, device: str = "cpu",
                   amp: bool = False, batch_size: int = 256, workers: int = 2, interpolation: str | None = None,
                   on_error: str = "fail", decode: str = "auto", progress: bool = True) -> Benchmark:
    """Load ``model`` (spec or :class:`LoadedModel`) and the cached features of the ID, OOD (and ID training) sets.

    Datasets are registered names, ImageFolder paths or :class:`ImageFolderDataset` objects.
    ``max_per_class`` / ``ood_max_per_class`` / ``train_max_per_class`` subsample each class (seeded) for the small
    profiles; ``interpolation`` overrides the model's resize interpolation (``"bilinear"`` reproduces MCM's
    code); ``on_error="skip"`` leaves undecodable images out (and lists them in ``Features.failed``);
    ``decode`` is :func:`helpers.features.extract_features`'s (``"auto"``: JPEGs decoded on the GPU under CUDA).
    ``ood_datasets`` is a list; a single name or folder is a list of one (:func:`helpers.data.as_dataset_list`).
    Two sets with the same name are an error (tables are keyed by it).
    ``kinds`` are the feature kinds of the ID and OOD sets; ``train_kinds`` those of the training split (None: the
    same). The detectors fitted on a training split read its global features only, while patch features
    (``"local"``, for GL-MCM) hold one vector per patch (ImageNet train: about 257 GB of fp16 for a B/16), so a bank
    needs ``train_kinds=("image", "preproj")``. The cache key holds the kinds, so the ID and OOD entries do not
    depend on ``train_kinds``.
    """
    ood_list = as_dataset_list(ood_datasets, "ood_datasets")  # checked before the model loads
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device,
                                                                      interpolation=interpolation)

    def dataset(d, cap):
        if isinstance(d, ImageFolderDataset):
            return d
        return get_dataset(d, max_per_class=cap, on_error=on_error)

    id_ds = dataset(id_dataset, max_per_class)
    warn_unknown_classes(loaded, id_ds.class_names)
    datasets = {id_ds.name: id_ds}
    for d in ood_list:
        ds = dataset(d, ood_max_per_class)
        if ds.name in datasets:
            raise ValueError(f"two datasets are named {ds.name!r} ({datasets[ds.name].root} and {ds.root}); tables "
                             f"are keyed by dataset name. Fix: rename a folder or load it with "
                             f"get_dataset(path, name=...)")
        datasets[ds.name] = ds

    def feats(ds, kinds=kinds):
        return extract_features(loaded, ds, kinds=kinds, batch_size=batch_size, num_workers=workers, amp=amp,
                                decode=decode, progress=progress)

    out = {name: feats(ds) for name, ds in datasets.items()}
    train = None
    if train_dataset is not None:
        train_ds = dataset(train_dataset, train_max_per_class)
        if train_ds.class_names != id_ds.class_names:
            raise ValueError(f"the training split {train_ds.name} has other classes than the ID set {id_ds.name}: "
                             f"{train_ds.class_names[:5]}... vs {id_ds.class_names[:5]}...")
        train = feats(train_ds, kinds if train_kinds is None else train_kinds)
    return Benchmark(loaded, id_ds.name, out.pop(id_ds.name), out, datasets, train)
