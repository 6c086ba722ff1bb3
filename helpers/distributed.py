r"""Data-parallel training under ``torchrun``: one code path that is a single process when not launched by it.

Launched as ``torchrun --nproc_per_node K script.py`` every process (rank) runs the same script; ``torchrun`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them the world is one
process and every function here is the identity (no process group, no wrapper), so the single-process numbers do
not change.

How a training step is shared so that its result equals the single-process step (the rule of the one training
loop, :func:`helpers.training.fit`, and of the objectives of :mod:`helpers.finetune.full`, :mod:`helpers.finetune.cma`
and :mod:`helpers.setar.finetune`):

1. every rank draws the *global* batch exactly as one process would (same seed, same order, same random crops,
   flips and Mixup/CutMix, drawn for the whole batch), then keeps its contiguous slice (:func:`shard`);
2. the model wrapped by :func:`wrap` (``DistributedDataParallel``) encodes the slice;
3. the slices' outputs (logits, embeddings) are concatenated across ranks *with their gradients*
   (:func:`all_gather_with_grad`) and every rank computes the unchanged loss of the global batch;
4. backward: the gather sends each rank ``K`` times the gradient of its rows (the sum over the ``K`` identical
   copies of the loss), and DDP divides the summed parameter gradients by ``K``: the full-batch gradient.

Step 3 is open_clip's ``gather_features(..., gather_with_grad=True, local_loss=False)``
(``mlfoundations/open_clip`` ``src/open_clip/loss.py``). It makes every loss exact, also those that are not a
mean over samples (CLIP's contrastive loss, LoCoOp's entropy averaged over a data-dependent number of patches),
and slices of unequal sizes need no reweighting. The cost is that each rank computes the (cheap) loss on the
whole batch and draws the whole batch's augmentation.

Caches: :func:`cached_tensors` lets every rank train, rank 0 alone writes, and every rank returns what rank 0
wrote (the cache folder, ``CLIPOOD_CACHE``, must be shared by the ranks, as for feature extraction).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from . import cache


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``: from the process group when there is one, else from torchrun's ``RANK`` and
    ``WORLD_SIZE`` (``(0, 1)`` when not launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group once when launched by torchrun with more than one process; ``(rank, world)``.

    ``backend``: ``nccl`` when CUDA is available, else ``gloo``; ``CLIPOOD_DIST_BACKEND`` or the argument
    override it. Under nccl each process uses the GPU ``LOCAL_RANK`` (``torch.cuda.set_device``), so call it before
    loading the model to put each rank's copy on its own GPU."""
    rank, world = rank_world()
    if world > 1 and not dist.is_initialized():
        backend = backend or os.environ.get("CLIPOOD_DIST_BACKEND") or (
            "nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank_world()


def is_main() -> bool:
    """Whether this is rank 0 (the one that writes files and shows progress)."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing to do in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling a cache), the other ranks after it (and then read that cache)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def local_device(device: torch.device | str) -> torch.device:
    """``device``, except that a CUDA device becomes this process's GPU ``cuda:LOCAL_RANK`` under torchrun."""
    device = torch.device(device)
    if device.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in ``DistributedDataParallel`` when the world has more than one process, else ``module`` itself.
    Only the parameters that require gradients when it is wrapped are synchronised; the models trained here have
    no batch norm, so buffers are not broadcast at every step."""
    if init()[1] == 1:
        return module
    device = next(module.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def shard_bounds(n: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous slice of ``n`` items: the first ``n mod K`` ranks get one more
    item than the others (``numpy.array_split``'s rule). Every rank must get one (a model cannot encode an empty
    batch, and DDP needs a backward pass on every rank): ``n < K`` is an error."""
    rank, world = rank_world()
    if n < world:
        raise ValueError(f"a batch of {n} item(s) cannot be split over {world} processes (each needs one). Fix: "
                         f"launch fewer processes, or choose batch_size so that no batch (the last one included) "
                         f"is smaller than the number of processes.")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def shard(batch):
    """This rank's contiguous slice (:func:`shard_bounds`) of a global batch (anything sliceable along its first
    axis: indices, images (B, ...))."""
    start, stop = shard_bounds(len(batch))
    return batch[start:stop]


class _GatherRows(torch.autograd.Function):
    """All ranks' (n_r, ...) tensors concatenated in rank order; the backward pass sums the gradients of the
    concatenation over the ranks and returns this rank's rows (``torch.distributed.nn.functional.all_gather``'s
    gradient, for unequal n_r and every backend)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
        sizes = [int(s) for s in sizes]
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.rows = (sum(sizes[:rank]), sum(sizes[:rank + 1]))
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (n_r, ...) concatenated along the first axis in rank order, (Σ n_r, ...); ``x`` itself in
    one process. Gradients flow back to each rank's rows, summed over the ranks: when every rank computes the same
    loss of the concatenation, each gets ``K`` times its rows' gradient, which DDP's mean over ``K`` cancels."""
    if rank_world()[1] == 1:
        return x
    return _GatherRows.apply(x)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself in one process."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _NotCached(Exception):
    pass


def _lookup(kind: str, name: str, key: dict):
    def missing():
        raise _NotCached

    try:
        return cache.cached_tensors(kind, name, key, missing)[:2]
    except _NotCached:
        return None


def cached_tensors(kind: str, name: str, key: dict, build: Callable[[], tuple[dict, dict]], *,
                   use_cache: bool = True) -> tuple[dict[str, torch.Tensor], dict, bool]:
    """:func:`helpers.cache.cached_tensors` for a ``build`` that every rank must run together (a DDP training).

    All ranks follow rank 0's look-up; on a miss all build, rank 0 writes, and after a barrier every rank reads
    rank 0's file, so all return the same tensors and information. One process: exactly
    :func:`helpers.cache.cached_tensors`."""
    rank, world = init()
    if world == 1:
        return cache.cached_tensors(kind, name, key, build, use_cache=use_cache)
    barrier()  # rank 0 has finished any write of an earlier call
    hit = broadcast_object(use_cache and rank == 0 and _lookup(kind, name, key) is not None)
    if not hit:
        tensors, info = build()
        if rank == 0:
            cache.cached_tensors(kind, name, key, lambda: (tensors, info), use_cache=False)
        barrier()
    found = _lookup(kind, name, key)
    if found is None:
        raise RuntimeError(f"rank {rank} cannot read the {kind!r} cache entry rank 0 wrote under "
                           f"{cache.artifact_dir(kind, name, key)}. Fix: point CLIPOOD_CACHE at a folder "
                           f"every rank shares.")
    return found[0], found[1], hit
