"""Run profiles: a small dict of parameters per notebook. Nothing else differs between profiles.

- ``smoke``    CI: seconds per notebook; the tiny pocket CLIP, a few images per class.
- ``teaching`` a laptop CPU, minutes: the pocket CLIP on the mirrored CIFAR-10 benchmark.
- ``paper``    GPUs and internet: open_clip pretrained models on the ImageNet-1k protocol.

The runner injects ``COMMON[profile]`` then ``NOTEBOOKS[profile][NN]`` into notebook ``NN``'s cell tagged
``parameters``; each notebook's own parameters cell holds the teaching values as defaults.
"""

from __future__ import annotations

from .data.registry import PAPER_ID, PAPER_OOD, TEACHING_ID, TEACHING_OOD

COMMON: dict[str, dict] = {
    "smoke": {
        "profile": "smoke", "model": "pocket:smoke", "device": "cpu", "amp": False,
        "id_dataset": TEACHING_ID, "ood_datasets": list(TEACHING_OOD),
        "max_per_class": 12, "ood_max_per_class": 6, "batch_size": 64, "workers": 0, "n_boot": 20,
    },
    "teaching": {
        "profile": "teaching", "model": "pocket:teaching", "device": "cpu", "amp": False,
        "id_dataset": TEACHING_ID, "ood_datasets": list(TEACHING_OOD),
        "max_per_class": None, "ood_max_per_class": None, "batch_size": 256, "workers": 2, "n_boot": 200,
    },
    "paper": {
        "profile": "paper", "model": "ViT-B-16/openai", "device": "cuda", "amp": True,
        "id_dataset": PAPER_ID, "ood_datasets": list(PAPER_OOD),
        "max_per_class": None, "ood_max_per_class": None, "batch_size": 256, "workers": 8, "n_boot": 1000,
    },
}

NOTEBOOKS: dict[str, dict[str, dict]] = {
    "smoke": {
        "01": {"projection_points": 200},
        "02": {},
        "03": {},
        "04": {},
    },
    "teaching": {
        "01": {"projection_points": 2000},
        "02": {},
        "03": {},
        "04": {},
    },
    "paper": {
        "01": {"projection_points": 5000},
        "02": {},
        "03": {},
        "04": {},
    },
}


def parameters(profile: str, notebook: str) -> dict:
    """Parameters for notebook ``NN`` (its two-digit prefix) under ``profile``."""
    if profile not in COMMON:
        raise KeyError(f"unknown profile {profile!r}; known: {sorted(COMMON)}")
    return {**COMMON[profile], **NOTEBOOKS[profile].get(notebook, {})}
