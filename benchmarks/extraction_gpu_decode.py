"""Forward-only vs PIL-worker extraction vs tensor-decode extraction, for one model and image count.

    python benchmarks/extraction_gpu_decode.py --model ViT-B-16/random --device cuda --amp --images 1000
    python benchmarks/extraction_gpu_decode.py --model pocket:small --dataset cifar10-test --images 2000  # CPU

Rows (same images, batch size, workers and autocast):

- *forward-only*: the image encoder on tensors already preprocessed and held on the model's device;
- *extraction, decode=pil*: ``extract_features`` with PIL decoding and the model's transform in DataLoader workers;
- *extraction, decode=tensor*: ``extract_features(decode="tensor")`` — on CUDA the workers read files and the
  main process decodes the batch with nvJPEG and preprocesses it on the GPU; on the CPU the workers decode with
  ``torchvision.io.decode_jpeg`` and preprocess with the same tensor code (:mod:`helpers.decode`).

``ratio`` is images/s over forward-only images/s: how much of the model's speed the pipeline keeps (target
>= 0.9 for decode=tensor under AMP for ViT-B-16 on a GPU). Images come from ``--dataset`` (``imagenet-sample``:
ImageNet-sized JPEGs, the case that matters on a GPU), capped at ``--images`` (evenly over the classes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_throughput import extraction, forward_only, preprocessed  # noqa: E402

from helpers.data import get_dataset  # noqa: E402
from helpers.models import load_model  # noqa: E402


def benchmark(model: str, dataset: str, images: int, *, device: str, amp: bool, batch_size: int,
              workers: int) -> list[tuple[str, float]]:
    """``[(row name, images/s)]`` for forward-only and the two decode paths."""
    loaded = load_model(model, device=device)
    ds = get_dataset(dataset)
    ds = get_dataset(dataset, max_per_class=max(1, -(-images // len(ds.classes))))
    ds = ds.subset(range(min(images, len(ds))))
    rows = [("forward-only", forward_only(loaded, preprocessed(loaded, ds), batch_size, amp))]
    for decode in ("pil", "tensor"):
        extraction(loaded, ds.subset(range(min(len(ds), batch_size))), batch_size, workers, decode, amp)  # warm-up
        rows.append((f"extraction, decode={decode}", extraction(loaded, ds, batch_size, workers, decode, amp)))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-16/random")
    p.add_argument("--dataset", default="imagenet-sample")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    rows = benchmark(args.model, args.dataset, args.images, device=args.device, amp=args.amp,
                     batch_size=args.batch_size, workers=args.workers)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} on {args.dataset} ({args.images} images), {gpu}, amp={args.amp}, "
          f"batch={args.batch_size}, workers={args.workers}")
    print(f"{'':28s} {'images/s':>9s} {'ratio':>6s}")
    for name, speed in rows:
        print(f"{name:28s} {speed:9.1f} {speed / rows[0][1]:6.2f}", flush=True)


if __name__ == "__main__":
    main()
