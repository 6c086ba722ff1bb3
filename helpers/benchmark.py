"""The benchmark every notebook starts from: one model, an ID test set and OOD sets, as cached features."""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import ImageFolderDataset, get_dataset
from .features import Features, extract_features
from .models import LoadedModel, load_model


@dataclass
class Benchmark:
    model: LoadedModel
    id_name: str
    id: Features
    ood: dict[str, Features]
    datasets: dict[str, ImageFolderDataset] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.id.class_names


def load_benchmark(model: str | LoadedModel, id_dataset: str, ood_datasets: list[str], *,
                   kinds=("image", "preproj"), max_per_class: int | None = None,
                   ood_max_per_class: int | None = None, device: str = "cpu", amp: bool = False,
                   batch_size: int = 256, workers: int = 2, interpolation: str | None = None,
                   on_error: str = "fail", progress: bool = True) -> Benchmark:
    """Load ``model`` (spec or :class:`LoadedModel`) and the cached features of the ID and OOD sets.

    ``max_per_class`` / ``ood_max_per_class`` subsample each class (seeded) for the small profiles;
    ``interpolation`` overrides the model's resize interpolation (``"bilinear"`` reproduces MCM's code).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device,
                                                                      interpolation=interpolation)
    datasets = {id_dataset: get_dataset(id_dataset, max_per_class=max_per_class, on_error=on_error)}
    for name in ood_datasets:
        datasets[name] = get_dataset(name, max_per_class=ood_max_per_class, on_error=on_error)
    feats = {name: extract_features(loaded, ds, kinds=kinds, batch_size=batch_size, num_workers=workers,
                                    amp=amp, progress=progress)
             for name, ds in datasets.items()}
    return Benchmark(loaded, id_dataset, feats.pop(id_dataset), feats, datasets)
