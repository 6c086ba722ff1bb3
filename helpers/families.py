r"""Model families for the ID-accuracy ↔ OOD-AUROC study, and the familiar-OOD (PT-OOD) pocket CLIP.

**Families.** PLP (Adaloglou et al., TMLR 2024, ``HHU-MMBS/plp-official-tmlr2024``) reports a linear relation
($R^2 \ge 0.92$ on 4 benchmarks) between how well a CLIP model classifies the ID classes and how well it
detects OOD data, across open_clip models. A family is a list of :class:`FamilyMember`:

- ``"open_clip"``: :data:`OPEN_CLIP_FAMILY`, open_clip models from B/32 to bigG/14 with their pretrained tags;
- ``"pockets"`` / ``"pockets-100"``: pocket CLIPs (:mod:`helpers.models.pocket`): each listed pocket CLIP's final
  checkpoint plus the snapshots its config saves along the run (``PocketConfig.snapshots``). All are trained on
  first use through ``pocket_checkpoint`` and cached; snapshots cost nothing extra.

:func:`evaluate_family` scores every member with :func:`helpers.evaluation.evaluate` (the same detectors and
code as the main comparison), :func:`family_summary` makes one row per member and :func:`fit_line` fits AUROC
against accuracy (scipy's ``linregress``).

**Familiar OOD.** Miyai et al. (*Can pre-trained networks detect familiar out-of-distribution data?*, 2023;
``AtsuMiyai/PT-OOD`` has no code) argue that OOD data the backbone saw during pretraining ("PT-OOD") is poorly
separated by a linear probe's ID decision boundaries, while a feature-space detector (kNN) is not hurt.
:func:`familiar_split` picks some Tiny-ImageNet classes (from the near-OOD set, i.e. not CIFAR-10 concepts) to be
*seen*: ``pretrain_per_class`` of their images join the pocket CLIP's pretraining (captioned with their class
names like every pretraining image) and the rest form the *seen* OOD test set; the *unseen* classes give a test
set with the same number of images per class. :func:`familiar_config` adds the seen images to a base pocket
config; the base config itself is the control (same architecture, schedule and seed, without the seen images).
:func:`familiar_experiment` scores both, :func:`familiar_gaps` computes the AUROC changes and
:func:`familiar_verdict` states what they say about the claim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .benchmark import load_benchmark
from .data import ImageFolderDataset, as_dataset_list, get_dataset, per_class_choice
from .evaluation import Evaluation, evaluate
from .models import LoadedModel, load_model
from .models.pocket import CONFIGS, PocketConfig, PretrainSource, get_config, pocket_checkpoint
from .views import familiar_gaps, family_summary  # noqa: F401  (their home: helpers.views)

# PLP's CLIP models (openai and LAION-2B weights, B/32 to bigG/14), as open_clip "ARCH/TAG" specs
OPEN_CLIP_FAMILY: tuple[str, ...] = (
    "ViT-B-32/openai", "ViT-B-16/openai", "ViT-L-14/openai",
    "ViT-B-32/laion2b_s34b_b79k", "ViT-B-16/laion2b_s34b_b88k", "ViT-L-14/laion2b_s32b_b82k",
    "ViT-H-14/laion2b_s32b_b79k", "ViT-bigG-14/laion2b_s39b_b160k",
)
# pocket CLIPs whose final checkpoints and snapshots form each pocket family
POCKET_FAMILIES: dict[str, tuple[str, ...]] = {
    "pockets": ("small", "tiny"),
    "pockets-100": ("tiny-100", "tiny-100-snapshots"),
}


@dataclass(frozen=True)
class FamilyMember:
    """One model of a family: an open_clip spec, or a pocket config (optionally a snapshot along its run)."""

    name: str
    spec: str | None = None  # "ARCH/TAG" (or anything load_model accepts)
    pocket: PocketConfig | None = None
    snapshot: float | None = None  # fraction of the pocket run; None = the final checkpoint

    def load(self, device: str = "cpu") -> LoadedModel:
        if self.pocket is None:
            return load_model(self.spec, device=device)
        arch, ckpt, info = pocket_checkpoint(self.pocket, device=device)
        if self.snapshot is None:
            loaded = load_model(arch, str(ckpt), device=device)
            loaded.info, loaded.name = info, self.name
            return loaded
        key = f"{self.snapshot:.2f}"
        if key not in info.get("snapshots", {}):
            raise KeyError(f"pocket CLIP {self.pocket.name!r} saved no snapshot at {key} (it saved "
                           f"{sorted(info.get('snapshots', {}))}); add it to PocketConfig.snapshots")
        loaded = load_model(arch, str(ckpt.parent / info["snapshots"][key]), device=device)
        # the training report's zero-shot accuracy belongs to the final checkpoint, not to this snapshot
        loaded.info = {**info, "snapshot": self.snapshot, "zero_shot_accuracy": None}
        loaded.name = self.name
        return loaded


def pocket_members(config: str | PocketConfig) -> list[FamilyMember]:
    """The snapshots (in training order) and the final checkpoint of one pocket CLIP run."""
    cfg = get_config(config)
    snaps = [FamilyMember(f"pocket:{cfg.name} @{f:.0%}", pocket=cfg, snapshot=f) for f in sorted(cfg.snapshots)]
    return snaps + [FamilyMember(f"pocket:{cfg.name}", pocket=cfg)]


def get_family(family: str | list[str]) -> list[FamilyMember]:
    """Members of a named family (``"open_clip"``, ``"pockets"``, ``"pockets-100"``) or of a list of model specs,
    where ``"pocket:<name>"`` stands for that pocket run's snapshots and final checkpoint."""
    if isinstance(family, (list, tuple)):
        return [m for s in family for m in
                (pocket_members(s.partition(":")[2]) if s.startswith("pocket:") else [FamilyMember(s, spec=s)])]
    if family == "open_clip":
        return [FamilyMember(s, spec=s) for s in OPEN_CLIP_FAMILY]
    if family in POCKET_FAMILIES:
        return [m for p in POCKET_FAMILIES[family] for m in pocket_members(CONFIGS[p])]
    raise KeyError(f"unknown model family {family!r}; known: {['open_clip', *POCKET_FAMILIES]}, or pass a list of "
                   f"model specs such as ['ViT-B-16/openai', 'ViT-L-14/openai']")


def score_model(loaded: LoadedModel, train: ImageFolderDataset, id_test: ImageFolderDataset,
                ood: Sequence[ImageFolderDataset], detectors: Sequence, *, step: str, method: str = "zero-shot",
                results_dir=None, n_boot: int = 0, fpr_method: str = "nearest", device: str = "cpu",
                factors: dict[str, dict] | None = None, **extract) -> Evaluation:
    """Notebook 03's pipeline for one model: cached features of the ID training split ``train``, the ID test set
    and the ``ood`` sets (``extract``: ``amp``, ``batch_size``, ``workers``), then :func:`evaluate` (``factors``:
    its factor columns per OOD set)."""
    bench = load_benchmark(loaded, id_test, list(ood), train_dataset=train, kinds=("image", "preproj"),
                           device=device, progress=False, **extract)
    return evaluate(detectors, bench, results_dir=results_dir, step=step, method=method, n_boot=n_boot,
                    fpr_method=fpr_method, device=device, factors=factors)


def evaluate_family(members: list[FamilyMember], detectors: Sequence, *, id_dataset: str, ood_datasets: list[str],
                    probe_dataset: str, max_per_class: int | None = None, ood_max_per_class: int | None = None,
                    probe_max_per_class: int | None = None, device: str = "cpu", **kwargs
                    ) -> tuple[pd.DataFrame, list[LoadedModel]]:
    """The long-table rows (``step="family"``) of every member and the loaded models (for provenance).

    Each member goes through :func:`score_model` (``kwargs``: ``results_dir``, ``n_boot``, ``amp``,
    ``batch_size``, ``workers`` ...) on ``probe_dataset`` (ID training split), ``id_dataset`` and
    ``ood_datasets``, subsampled per class as given.
    """
    train = get_dataset(probe_dataset, max_per_class=probe_max_per_class)
    id_test = get_dataset(id_dataset, max_per_class=max_per_class)
    ood = [get_dataset(n, max_per_class=ood_max_per_class) for n in as_dataset_list(ood_datasets, "ood_datasets")]
    tables, models = [], []
    for member in members:
        loaded = member.load(device)
        tables.append(score_model(loaded, train, id_test, ood, detectors, step="family", device=device,
                                  **kwargs).table)
        loaded.model.to("cpu")  # keep for provenance, release accelerator memory
        models.append(loaded)
    return pd.concat(tables, ignore_index=True), models


def fit_line(x, y) -> dict[str, float]:
    """Least-squares line ``y = slope · x + intercept`` with ``r2`` (= Pearson r²), ``pearson_r`` and ``p_value``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"need at least 3 (x, y) points of equal length to fit a line, got {len(x)} and {len(y)}")
    if np.ptp(x) == 0:
        raise ValueError("all x values are equal; a line through them is undefined")
    res = stats.linregress(x, y)
    return {"slope": res.slope, "intercept": res.intercept, "r2": res.rvalue ** 2, "pearson_r": res.rvalue,
            "p_value": res.pvalue, "n": len(x)}


# -------------------------------------------------------------------------------------- familiar OOD
@dataclass(frozen=True)
class FamiliarSplit:
    """Which classes of ``dataset`` the familiar-OOD pocket CLIP sees in pretraining, and with which images."""

    dataset: str
    seen: tuple[str, ...]  # class folders whose images (partly) join pretraining
    unseen: tuple[str, ...]
    pretrain_per_class: int
    seed: int

    def pretrain_source(self) -> PretrainSource:
        return PretrainSource(self.dataset, classes=self.seen, max_per_class=self.pretrain_per_class, seed=self.seed)

    def _classes(self, classes: tuple[str, ...]) -> ImageFolderDataset:
        ds = get_dataset(self.dataset)
        keep = set(classes)
        return ds.subset([i for i, s in enumerate(ds.samples) if ds.classes[s.label] in keep])

    def pretrain_images(self) -> ImageFolderDataset:
        """The images of the seen classes used in pretraining (the selection ``pretraining_arrays`` makes)."""
        seen = self._classes(self.seen)
        return seen.subset(per_class_choice(seen.labels, self.pretrain_per_class, self.seed))

    def test_sets(self, max_per_class: int | None = None) -> dict[str, ImageFolderDataset]:
        """``{"seen": held-out images of the seen classes, "unseen": as many per class of the unseen classes}``.

        ``max_per_class`` subsamples both further (seeded), for the small profiles.
        """
        seen = self._classes(self.seen)
        used = per_class_choice(seen.labels, self.pretrain_per_class, self.seed)
        held = seen.subset(np.setdiff1d(np.arange(len(seen)), used), name=f"{self.dataset}-seen")
        per_class = int(np.bincount(held.labels).max())
        unseen = self._classes(self.unseen)
        unseen = unseen.subset(per_class_choice(unseen.labels, per_class, self.seed), name=f"{self.dataset}-unseen")
        out = {"seen": held, "unseen": unseen}
        if max_per_class is not None:
            out = {k: d.subset(per_class_choice(d.labels, max_per_class, self.seed)) for k, d in out.items()}
        return out


def familiar_split(n_seen: int | None = None, *, pretrain_per_class: int = 40, seed: int = 0,
                   dataset: str = "tiny-imagenet-near") -> FamiliarSplit:
    """Choose ``n_seen`` classes of ``dataset`` (default: half, seeded) to be seen in pretraining."""
    ds = get_dataset(dataset)
    classes = list(ds.classes)
    n_seen = len(classes) // 2 if n_seen is None else n_seen
    if not 1 <= n_seen < len(classes):
        raise ValueError(f"n_seen must be between 1 and {len(classes) - 1} (the {dataset} classes), got {n_seen}")
    smallest = int(np.bincount(ds.labels).min())
    if not 1 <= pretrain_per_class < smallest:
        raise ValueError(f"pretrain_per_class must leave test images: between 1 and {smallest - 1} for {dataset} "
                         f"(its smallest class has {smallest} images), got {pretrain_per_class}")
    rng = np.random.default_rng(seed)
    seen = sorted(rng.choice(classes, n_seen, replace=False).tolist())
    unseen = [c for c in classes if c not in set(seen)]
    return FamiliarSplit(dataset, tuple(seen), tuple(unseen), pretrain_per_class, seed)


def familiar_config(base: str | PocketConfig, split: FamiliarSplit) -> PocketConfig:
    """``base`` with the seen images of ``split`` added to its pretraining (the familiar-OOD pocket CLIP)."""
    cfg = get_config(base)
    return dataclasses.replace(cfg, name=f"{cfg.name}-familiar-{split.dataset}",
                               pretrain=cfg.pretrain + (split.pretrain_source(),), snapshots=())


def familiar_experiment(base: str | PocketConfig, split: FamiliarSplit, detectors: Sequence, *, id_dataset: str,
                        probe_dataset: str, id_max_per_class: int | None = None,
                        probe_max_per_class: int | None = None, test_max_per_class: int | None = None,
                        device: str = "cpu", **kwargs) -> tuple[pd.DataFrame, list[LoadedModel]]:
    """Score the control (``base``, ``method="control"``) and the familiar pocket CLIP (``method="familiar"``)
    on the seen and unseen test sets of ``split`` (``step="familiar: <dataset>"``); one :func:`score_model` call
    per model (``kwargs``: ``results_dir``, ``n_boot``, ``fpr_method``, ``amp``, ``batch_size``, ``workers``).
    Returns the long-table rows and the two models."""
    train = get_dataset(probe_dataset, max_per_class=probe_max_per_class)
    id_test = get_dataset(id_dataset, max_per_class=id_max_per_class)
    parts = split.test_sets(test_max_per_class)
    tests = list(parts.values())
    factors = {d.name: {"ood_set": split.dataset, "variant": part} for part, d in parts.items()}
    tables, models = [], []
    for label, cfg in (("control", get_config(base)), ("familiar", familiar_config(base, split))):
        loaded = FamilyMember(f"pocket:{cfg.name}", pocket=cfg).load(device)
        tables.append(score_model(loaded, train, id_test, tests, detectors, step=f"familiar: {split.dataset}",
                                  factors=factors,
                                  method=label, device=device, **kwargs).table)
        models.append(loaded)
    return pd.concat(tables, ignore_index=True), models


def familiar_verdict(gaps: pd.DataFrame, boundary: Sequence[str], feature: Sequence[str],
                     noise: float = 3.0) -> pd.DataFrame:
    """What the familiar-OOD experiment says about the PT-OOD claim, per experiment (``step``).

    ``boundary`` / ``feature``: detector labels of the boundary-based (MCM, probes) and the feature-space
    (kNN, Mahalanobis) detectors. On the seen classes the claim predicts that familiarity costs boundary-based
    detectors more than feature-space ones. ``noise``: AUROC points below which the two means are called
    indistinguishable. The effect is *domain-wide* rather than class-specific when the mean absolute change on
    the seen classes is less than twice as large as its difference from the change on the unseen classes.
    """
    rows = []
    for step, g in gaps.groupby("step", sort=False):
        g = g.set_index("detector_label")
        seen, unseen = g["familiar − control on seen"], g["familiar − control on unseen"]
        both = [*boundary, *feature]
        b, f = seen[list(boundary)].mean(), seen[list(feature)].mean()
        specific = (seen - unseen)[both].abs().mean() >= 0.5 * seen[both].abs().mean()
        rows.append({"experiment": step, "boundary-based: familiar − control (seen)": b,
                     "feature-space: familiar − control (seen)": f,
                     "direction the claim predicts": bool(b < f), "difference above noise": bool(abs(b - f) >= noise),
                     "effect": "class-specific" if specific else "domain-wide (unseen classes changed as much)"})
    return pd.DataFrame(rows)
