"""Run profiles: a small dict of parameter *overrides* per notebook. Nothing else differs between profiles.

- ``teaching`` a laptop CPU, minutes: the pocket CLIP on the mirrored CIFAR-10 benchmark. Its values are the
  defaults written in each notebook's cell tagged ``parameters`` — the one place they live — so a notebook opened
  in JupyterLab runs the teaching profile as it is.
- ``smoke``    CI: seconds per notebook; the tiny pocket CLIP, a few images per class.
- ``paper``    GPUs and internet: open_clip pretrained models on the ImageNet-1k protocol.
- ``laptop``   a laptop CPU *with* internet: the teaching benchmark with a downloaded ``ViT-B-32/openai``, on
  subsets that keep each notebook within minutes (README: "A laptop with internet").

The runner injects ``COMMON[profile]`` then ``NOTEBOOKS[profile][NN]`` into notebook ``NN``'s parameters cell;
every key must be a parameter of that notebook (a test checks it), so a profile cannot set a name that the
notebook would silently ignore.
"""

from __future__ import annotations

from .data.registry import PAPER_ID, PAPER_OOD

COMMON: dict[str, dict] = {
    "smoke": {"profile": "smoke", "model": "pocket:tiny-100", "max_per_class": 12, "ood_max_per_class": 6,
              "batch_size": 64, "workers": 0},
    "teaching": {"profile": "teaching"},
    "laptop": {"profile": "laptop", "model": "ViT-B-32/openai", "max_per_class": 20, "ood_max_per_class": 10,
               "batch_size": 64, "workers": 2},
    "paper": {"profile": "paper", "model": "ViT-B-16/openai", "device": "cuda", "amp": True, "id_dataset": PAPER_ID,
              "ood_datasets": list(PAPER_OOD), "workers": 8},
}

NOTEBOOKS: dict[str, dict[str, dict]] = {
    "smoke": {
        "01": {"projection_points": 200},
        "02": {"n_boot": 20, "neglabel_max_words": 1000},
        "03": {"n_boot": 20, "probe_max_per_class": 20, "probe_epochs": 10, "familiar_base": "tiny-100-snapshots",
               "familiar_experiments": {"tiny-imagenet-near": {"classes": 20, "pretrain_per_class": 20},
                                        "fashion-mnist": {"classes": 5, "pretrain_per_class": 50}},
               "familiar_max_per_class": 5, "familiar_id_max_per_class": 12, "familiar_probe_max_per_class": 20,
               "family": "pockets-100", "family_max_per_class": 12, "family_ood_max_per_class": 3,
               "family_probe_max_per_class": 20},
        "04": {"n_boot": 20, "claim_n_boot": 50, "train_max_per_class": 20, "seeds": [1, 2], "eval_max_images": 200,
               "probe_epochs": 20, "ft_epochs": {"1": 2, "16": 1, "full": 1}, "coop_epochs": {"1": 5, "16": 2, "full": 2}},
        "05": {"n_boot": 20, "eval_max_images": 100, "search_per_class": 3, "split_seeds": [0, 1],
               "ratios": [0.0, 0.1, 0.2], "ft_epochs": 1, "ft_batch_size": 15, "lora_r": 4, "lora_alpha": 1},
        "06": {"n_boot": 20, "eval_max_images": 60, "sweep_models": ["pocket:tiny-100-fixed"], "train_per_class": 6,
               "lambdas": [0.0, 0.1], "sweep_lambdas": [0.0, 0.1], "claim_lambdas": [0.0, 0.1], "seeds": [0, 1],
               "epochs": 2, "ft_batch_size": 20,
               "neglabel_max_words": 300},
        "07": {"n_boot": 20, "eval_max_images": 100, "source_dataset": "dtd10", "n_pairs": 8, "steps": 6,
               "step_snapshots": [3], "attack_batch": 8, "eps_grid": [8 / 255], "eps_steps": 3},
    },
    "teaching": {},
    "laptop": {
        "01": {"projection_points": 200, "zero_shot_prompts": ["single", "plp5"], "gap_prompts": "plp5"},
        "02": {"n_boot": 100, "neglabel_max_words": 500, "sensitivity_prompt_sets": ["single", "plp5"]},
        "03": {"n_boot": 100, "probe_max_per_class": 20, "family_max_per_class": 10, "family_ood_max_per_class": 3,
               "family_probe_max_per_class": 10, "family": ["ViT-B-32/openai", "ViT-B-32/laion2b_s34b_b79k"]},
        "04": {"n_boot": 100, "claim_n_boot": 200, "train_max_per_class": 16, "shots": [1, 16], "seeds": [1],
               "eval_max_images": 50, "ft_epochs": {"1": 5, "16": 1}, "ft_batch_size": 32,
               "coop_epochs": {"1": 10, "16": 3}},
        "05": {"n_boot": 100, "eval_max_images": 50, "search_per_class": 3, "split_seeds": [0], "ratios": [0.0, 0.1],
               "time_naive_search": False, "ft_epochs": 1},
        "06": {"n_boot": 100, "eval_max_images": 50, "sweep_models": [], "train_per_class": 5, "lambdas": [0.0, 1.0],
               "claim_lambdas": [0.0, 1.0], "seeds": [0], "epochs": 1, "ft_batch_size": 25,
               "neglabel_max_words": 300},
        "07": {"n_boot": 100, "eval_max_images": 50, "bank_max_per_class": 20, "n_pairs": 4, "steps": 5,
               "step_snapshots": [2],
               "attack_batch": 4, "eps_grid": []},
    },
    "paper": {
        "01": {"projection_points": 5000, "compare_published": True},
        "02": {"n_boot": 1000, "neglabel_max_words": None, "compare_published": True},
        "03": {"n_boot": 1000, "compare_published": True, "probe_dataset": "imagenet-train", "probe_batch_size": 8192,
               "probe_lr": 1e-3 * 8192 / 256, "family": "open_clip", "family_max_per_class": 10,
               "family_ood_max_per_class": 2000, "family_probe_max_per_class": 100},
        "04": {"n_boot": 1000, "compare_published": True, "train_dataset": "imagenet-train", "shots": [1, 16], "eval_max_images": None,
               "ft_epochs": {"1": 100, "16": 100}, "ft_batch_size": 256, "ft_lr": 2.5e-4, "ft_mixup": 0.8,
               "ft_cutmix": 1.0, "ft_augment": False, "coop_epochs": {"1": 50, "16": 50}, "locoop_top_k": 200},
        "05": {"n_boot": 1000, "eval_max_images": None, "search_dataset": "imagenet-train", "search_list": "published",
               "search_per_class": 1, "setar_top_k": 300, "time_naive_search": False, "use_published_edit": True,
               "ft_from_published_edit": True, "compare_published": True},
        "06": {"n_boot": 1000, "compare_published": True, "eval_max_images": None, "sweep_models": [], "train_dataset": "imagenet-train",
               "train_amp": False, "decay": "all",  # fp32 fine-tuning, every parameter decayed: as published
               "train_per_class": None, "lambdas": [0.0, 0.001], "claim_lambdas": [0.0, 0.001], "epochs": 10,
               "ft_batch_size": 512, "lr": 1e-5, "warmup": 500, "neglabel_max_words": None},
        "08": {"compare_published": True},
        "07": {"n_boot": 1000, "eval_max_images": None, "bank_dataset": "imagenet-train", "n_pairs": 1000,
               "source_dataset": "textures", "ood_datasets": ["inaturalist", "sun", "places", "textures"],
               "steps": 250, "step_snapshots": [25, 50, 100], "attack_batch": 16, "eps_grid": []},
    },
}


# notebooks that only read the others' tables (no model, no data): of COMMON they take the profile's name only
READ_ONLY = ("08",)


def parameters(profile: str, notebook: str) -> dict:
    """Parameters for notebook ``NN`` (its two-digit prefix) under ``profile``."""
    if profile not in COMMON:
        raise KeyError(f"unknown profile {profile!r}; known: {sorted(COMMON)}")
    common = {"profile": profile} if notebook in READ_ONLY else COMMON[profile]
    return {**common, **NOTEBOOKS[profile].get(notebook, {})}
