"""SeTAR's greedy search, naive (as published) vs fast, side by side on the same model and search split.

    python benchmarks/setar_search.py [--per-class 20] [--models pocket:small ViT-B-16/random] [--ratios 9]

For each model both searches run on the same images; the script checks that they select the same ratios and
that every candidate's objective agrees (relative tolerance 1e-4), and prints the wall times and the speed-up.
``ViT-B-16/random`` is the ViT-B/16 architecture (12 + 12 blocks, widths 768 / 512) with random weights at a
reduced input (64 px, 16 text tokens; ``--image-size``), which keeps every matrix SeTAR decomposes at its
ImageNet size: the timing is what matters, not the choices.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from helpers.data import get_dataset
from helpers.features import encode_images
from helpers.models import load_model
from helpers.setar import RATIOS, fast_search, make_split, naive_search


def run(spec: str, per_class: int, ratios, image_size: int) -> dict:
    kw = {"image_size": image_size, "context_length": 16} if "/random" in spec else {}
    loaded = load_model(spec, **kw)
    dataset = "imagenet-sample" if "/random" in spec else "cifar10-probe"
    ds = get_dataset(dataset, max_per_class=per_class)
    if "/random" in spec:  # 1000 classes x 1 image: keep the first classes, like a 1-per-class search split
        ds = ds.subset(range(min(len(ds), 10 * per_class)))
    split = make_split(loaded, ds)
    with torch.no_grad():  # warm-up: the first forward pass pays one-time costs that neither search should carry
        encode_images(loaded.model.visual, split.images[:8], ("image", "local"))
        loaded.model.encode_text(split.tokens[:8])
    fast = fast_search(loaded, split, ratios=ratios, top_k=max(1, round(0.3 * len(ds.class_names))))
    naive = naive_search(loaded, split, ratios=ratios, top_k=max(1, round(0.3 * len(ds.class_names))))
    same = fast.edit == naive.edit
    close = np.allclose(fast.log["loss"], naive.log["loss"], rtol=1e-4)
    return {"model": spec, "images": len(ds), "candidates": len(fast.log), "naive s": round(naive.seconds, 1),
            "fast s": round(fast.seconds, 1), "speed-up": round(naive.seconds / fast.seconds, 2),
            "same ratios": same, "objectives agree": close, "edit": dict(sorted(fast.edit.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["pocket:small", "ViT-B-16/random"])
    p.add_argument("--per-class", type=int, default=20, help="search images per class (pocket); x10 for ImageNet")
    p.add_argument("--ratios", type=int, default=len(RATIOS), help="how many of the ratios 0, 0.05, ... to try")
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for spec in args.models:
        r = run(spec, args.per_class, RATIOS[:args.ratios], args.image_size)
        print(" | ".join(f"{k}: {v}" for k, v in r.items()), flush=True)
        if not (r["same ratios"] and r["objectives agree"]):
            raise SystemExit(f"{spec}: the fast search disagrees with the naive search")


if __name__ == "__main__":
    main()
