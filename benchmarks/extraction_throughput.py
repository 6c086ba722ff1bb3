"""Feature extraction throughput vs forward-only throughput of the same model, measured side by side.

    python benchmarks/extraction_throughput.py [--images 2048] [--batch-size 128] [--workers 2]

*forward-only*: the model's image encoder on tensors already preprocessed and held in memory (on the model's device).
*extraction*:   ``helpers.features.extract_features`` end to end (decode, preprocess in DataLoader workers,
                forward, chunked atomic writes, merge), with the cache disabled.
Same images, batch size and thread count. The ratio says how much of the model's speed the pipeline keeps.
``benchmarks/extraction_gpu_decode.py`` adds the tensor decode path (``decode="tensor"``) with the same functions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from helpers.data import get_dataset
from helpers.features import encode_images, extract_features
from helpers.torchtools import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(loaded, tensors: torch.Tensor, batch_size: int, amp: bool = False) -> float:
    """Images per second of the image encoder alone on ``tensors`` (N, 3, H, W), preprocessed, moved to the
    model's device before the clock starts."""
    visual, device = loaded.model.visual, loaded.device
    tensors = tensors.to(device)
    with torch.inference_mode(), autocast(device, amp):
        encode_images(visual, tensors[:batch_size], ("image",))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(tensors), batch_size):
            encode_images(visual, tensors[i:i + batch_size], ("image",))
        _sync(device)
    return len(tensors) / (time.perf_counter() - t0)


def extraction(loaded, ds, batch_size: int, workers: int, decode: str = "pil", amp: bool = False) -> float:
    """Images per second of ``extract_features`` end to end (cache disabled, written to a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("CLIPOOD_CACHE")
        os.environ["CLIPOOD_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            extract_features(loaded, ds, kinds=("image",), batch_size=batch_size, num_workers=workers,
                             use_cache=False, progress=False, decode=decode, amp=amp)
            _sync(loaded.device)
            return len(ds) / (time.perf_counter() - t0)
        finally:
            os.environ.pop("CLIPOOD_CACHE") if old is None else os.environ.__setitem__("CLIPOOD_CACHE", old)


def preprocessed(loaded, ds) -> torch.Tensor:
    """The images of ``ds`` through the model's own (PIL) preprocessing, stacked (N, 3, H, W) on the CPU."""
    return torch.stack([loaded.preprocess(ds.load_rgb(i)) for i in range(len(ds))])


def main() -> None:
    from helpers.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--vit-images", type=int, default=512, help="images for the (slower) ViT-B-32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["pocket:small", "ViT-B-32/random"])
    args = p.parse_args()
    print(f"threads={torch.get_num_threads()} batch={args.batch_size} workers={args.workers}")
    print(f"{'model':22s} {'images':>6s} {'forward img/s':>14s} {'extraction img/s':>17s} {'ratio':>6s}")
    for spec in args.models:
        loaded = load_model(spec)
        n = args.images if spec.startswith("pocket") else args.vit_images
        ds = get_dataset("cifar10-test", max_per_class=n // 10)
        fwd = forward_only(loaded, preprocessed(loaded, ds), args.batch_size)
        ext = extraction(loaded, ds, args.batch_size, args.workers)
        print(f"{spec:22s} {len(ds):6d} {fwd:14.1f} {ext:17.1f} {ext / fwd:6.2f}", flush=True)


if __name__ == "__main__":
    main()
