"""Agreement of the tensor decode path with the PIL path on the teaching benchmark: features and OOD metrics.

    CLIPOOD_CACHE=/work/cold_cache python benchmarks/decode_agreement.py [--model pocket:small] \
        [--max-per-class 200] [--ood-max-per-class 100] [--train-max-per-class 100]

Extracts (and caches) ``image`` and ``preproj`` features of the teaching ID set, its OOD sets and the ID training
split once with ``decode="pil"`` and once with ``decode="tensor"`` (on the CPU: ``torchvision.io.decode_jpeg`` and
the tensor resize of :mod:`helpers.decode`, the code the GPU path runs after nvJPEG; on CUDA: nvJPEG), then prints

1. per set: the cosine between the two paths' global features of each image (min / median / mean) and the
   fraction of images whose features are equal to float32 precision (1 - cosine < 1e-6), the largest
   1 - cosine and the largest absolute difference of a feature value;
2. per detector (MCM, kNN on standardised pre-projection features as PLP, kNN on the CLIP embedding) and OOD set:
   AUROC with each path and the difference.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from helpers.benchmark import Benchmark
from helpers.data import TEACHING_ID, TEACHING_OOD, get_dataset
from helpers.evaluation import evaluate
from helpers.features import extract_features
from helpers.models import load_model

DETECTORS = ["mcm", {"name": "knn", "k": 1, "feature": "preproj", "standardize": True},
             {"name": "knn", "k": 1, "feature": "image", "standardize": False}]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="pocket:small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-per-class", type=int, default=200, help="ID test images per class")
    p.add_argument("--ood-max-per-class", type=int, default=100)
    p.add_argument("--train-max-per-class", type=int, default=100, help="kNN bank (cifar10-probe) per class")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=20)
    args = p.parse_args(argv)
    loaded = load_model(args.model, device=args.device)
    sets = {TEACHING_ID: get_dataset(TEACHING_ID, max_per_class=args.max_per_class),
            **{n: get_dataset(n, max_per_class=args.ood_max_per_class) for n in TEACHING_OOD}}
    train = get_dataset("cifar10-probe", max_per_class=args.train_max_per_class)
    feats, aurocs = {}, {}
    for decode in ("pil", "tensor"):
        f = {n: extract_features(loaded, ds, kinds=("image", "preproj"), num_workers=args.workers, decode=decode,
                                 progress=False) for n, ds in {**sets, "cifar10-probe": train}.items()}
        feats[decode] = f
        bench = Benchmark(loaded, TEACHING_ID, f[TEACHING_ID], {n: f[n] for n in TEACHING_OOD}, dict(sets),
                          f["cifar10-probe"])
        table = evaluate(DETECTORS, bench, n_boot=args.n_boot).table
        aurocs[decode] = table.set_index(["detector_label", "ood_set"])["auroc"]
    print(f"model {args.model} ({loaded.model_id}), device {args.device}, tensor decoder "
          f"{feats['tensor'][TEACHING_ID].meta['key']['decode']}")
    rows = []
    for n in [*sets, "cifar10-probe"]:
        a, b = feats["pil"][n], feats["tensor"][n]
        assert a.paths == b.paths, f"{n}: the two paths' rows differ"
        cos = (a.image.astype(np.float64) * b.image).sum(1)
        ext = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}
        kinds = sorted({ext.get(q.rsplit(".", 1)[-1].lower(), q) for q in a.paths})
        rows.append({"set": n, "files": "/".join(kinds), "images": len(a), "cos min": cos.min(),
                     "cos median": np.median(cos), "cos mean": cos.mean(), "1-cos max": 1 - cos.min(),
                     "max |diff|": np.abs(a.image - b.image).max(), "equal": np.mean(cos > 1 - 1e-6)})
    print("\nglobal features, tensor path vs PIL path (cosine per image; equal: fraction with 1 - cos < 1e-6):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    t = pd.DataFrame({"AUROC pil": aurocs["pil"], "AUROC tensor": aurocs["tensor"]})
    t["difference"] = t["AUROC tensor"] - t["AUROC pil"]
    print("\nAUROC (%), ID", TEACHING_ID, f"({len(feats['pil'][TEACHING_ID])} images):")
    print(t.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nlargest |AUROC difference|: {t['difference'].abs().max():.3f} points")


if __name__ == "__main__":
    main()
