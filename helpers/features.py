"""Cached feature extraction: image embeddings (global, pre-projection, local patches) and text embeddings.

Feature kinds (``kinds=``):

- ``"image"``   L2-normalised image embedding after the visual projection, ``x̂`` in the papers (N, D);
- ``"preproj"`` the pooled token after ``ln_post`` with the projection removed (N, W), what PLP probes;
- ``"local"``   L2-normalised projected patch embeddings for GL-MCM (N, P, D), float16. As in GL-MCM's code
  (AtsuMiyai/GL-MCM ``clip/model.py``) they come from the *value path* of the last block,
  ``v = x + out_proj(W_v · ln_1(x)); v = v + MLP(ln_2(v))``, followed by ``ln_post`` and ``proj``.

Cache: ``<cache>/features/<dataset>/<model>/<key>/`` holds one ``.npy`` per array and ``meta.json``. The key
hashes everything that determines the content: the model's image id and checkpoint hash, the preprocessing
transform, the dataset's file list (paths, sizes, mtimes, labels), the kinds, the autocast dtype, the bad-image
policy, a hash of the extraction code (:func:`helpers.cache.code_hash`) and, for the tensor decode path
(:mod:`helpers.decode`, ``decode="tensor"``; the default on CUDA), the JPEG decoder and a hash of that path's code
(the PIL path's key has no decode field: its caches predate the option). The folder is a
:class:`helpers.cache.CacheEntry`: ``meta.json`` records the key and the size and sha256 of every array file;
loading checks them (and that no value is NaN/inf), so a damaged or edited cache is reported and rebuilt, never
served.

Work is done in chunks of ``chunk_size`` images, each written atomically to ``parts/``; an interrupted run
resumes from the chunks already written (:func:`helpers.cache.save_chunk`; chunks written with another chunk size
are discarded, a damaged one is reported and extracted again), and the merge
checks that the rows cover every image exactly once. ``meta.json`` is written last, so a cache without it is
incomplete and is rebuilt, never reused. Under ``torchrun`` each process takes every ``world_size``-th chunk;
rank 0 merges the parts in chunk order, which gives the same arrays as a single process because batches never
cross chunk boundaries.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed, events
from .cache import (
    CacheEntry,
    cached_arrays,
    code_hash,
    load_chunk,
    read_arrays,
    save_chunk,
    slug,
    write_arrays,
)
from .data import ImageFolderDataset, collate_skip, get_dataset
from .decode import DECODES, decode_code_hash, decode_id, resolve_decode, tensor_loader
from .errors import ClipOODError, CorruptImageError, NonFiniteError
from .io import build_lock, sha256_json
from .models import LoadedModel, load_model
from .paths import cache_dir
from .torchtools import amp_precision, autocast

KINDS = ("image", "preproj", "local")


@dataclass
class Features:
    """Features of one dataset under one model. Rows align with ``labels`` and ``paths``."""

    dataset: str
    model_id: str
    labels: np.ndarray  # (N,)
    paths: list[str]
    classes: list[str]
    class_names: list[str]
    image: np.ndarray | None = None  # (N, D) normalised
    preproj: np.ndarray | None = None  # (N, W)
    local: np.ndarray | None = None  # (N, P, D) normalised, float16
    failed: list[str] = field(default_factory=list)  # images skipped because they could not be decoded
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> Features:
        """The features of ``rows`` (indices into this set), in that order; ``meta`` is kept (it names the cache)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Features(self.dataset, self.model_id, self.labels[rows], [self.paths[i] for i in rows], self.classes,
                        self.class_names, failed=self.failed, meta=self.meta,
                        **{k: None if getattr(self, k) is None else getattr(self, k)[rows] for k in KINDS})


# ---------------------------------------------------------------------------------------- model
def _check_vit(visual) -> None:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if (not isinstance(visual, VisionTransformer) or not visual.transformer.batch_first
            or not isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)):
        raise NotImplementedError(
            f"pre-projection and local features need an open_clip VisionTransformer with standard blocks; "
            f"{type(visual).__name__} is not one. Extract kinds=('image',) for this model.")


def value_path(block, x: torch.Tensor) -> torch.Tensor:
    """GL-MCM's local tokens from a block input ``x`` (B, L, W): the attention replaced by its value path."""
    attn = block.attn
    w = attn.embed_dim
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * w:], attn.in_proj_bias[2 * w:])
    v = x + block.ls_1(attn.out_proj(v))
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def encode_images(visual, x: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Image features of a preprocessed batch ``x`` (B, 3, H, W) for the requested ``kinds``."""
    if kinds == ("image",):
        return {"image": F.normalize(visual(x).float(), dim=-1)}
    _check_vit(visual)
    h = visual._embeds(x)  # (B, L, W), batch first as in open_clip >= 2.23
    for blk in visual.transformer.resblocks[:-1]:
        h = blk(h)
    last = visual.transformer.resblocks[-1]
    pooled, _ = visual._pool(last(h))
    res = {}
    if "image" in kinds:
        res["image"] = F.normalize((pooled @ visual.proj).float(), dim=-1)
    if "preproj" in kinds:
        res["preproj"] = pooled.float()
    if "local" in kinds:
        v = value_path(last, h)
        res["local"] = F.normalize((visual.ln_post(v[:, 1:]) @ visual.proj).float(), dim=-1)
    return res


# ---------------------------------------------------------------------------------------- cache
def extraction_code_hash() -> str:
    """Hash of the code that turns images into features (part of every feature-cache key)."""
    from .data import imagefolder

    return code_hash(encode_images, value_path, _check_vit, imagefolder.to_rgb, imagefolder.ImageFolderDataset.load_rgb)


def cache_key(loaded: LoadedModel, ds: ImageFolderDataset, kinds: tuple[str, ...], amp: str,
              decode: str = "pil") -> dict:
    """The feature-cache key. ``decode`` is the resolved decode path (``"pil"`` or ``"tensor"``); the PIL path's key
    has no decode field, so caches written before the tensor path existed stay valid."""
    key = {
        "model_id": loaded.image_id, "checkpoint_sha256": loaded.checkpoint_sha256, "precision": loaded.precision,
        "transform": loaded.transform_id, "dataset": ds.name, "files": ds.fingerprint(), "n_files": len(ds),
        "kinds": sorted(kinds), "autocast": amp, "on_error": ds.on_error, "code": extraction_code_hash(),
    }
    if decode != "pil":
        key.update(decode=decode_id(loaded.device), decode_code=decode_code_hash())
    return key


def cache_path(key: dict) -> Path:
    return cache_dir() / "features" / slug(key["dataset"]) / slug(key["model_id"]) / sha256_json(key)[:20]


def cache_entry(folder: Path, key: dict) -> CacheEntry:
    """The feature-cache entry ``folder`` keyed by ``key`` (:class:`helpers.cache.CacheEntry`): one ``.npy`` per
    array (``labels`` and the kinds) and ``meta.json`` holding the rows' paths, the skipped images and the classes."""
    return CacheEntry(folder, key, f"feature cache of {key['dataset']}", "extracting the features again")


def _read_arrays(entry: CacheEntry, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of a checked entry (``local``, which may be huge, memory-mapped), after checking that every
    float value is finite and every array has one row per image."""
    arrays = read_arrays(entry, meta, mmap=("local",))
    for name, arr in arrays.items():
        if len(arr) != meta["info"]["n"]:
            raise ValueError(f"{name}.npy has {len(arr)} rows, expected {meta['info']['n']}")
        if arr.dtype.kind == "f" and not _all_finite(arr):
            raise ValueError(f"{name}.npy contains NaN/inf values")
    return arrays


def _all_finite(arr: np.ndarray, rows: int = 256) -> bool:
    """Whether every value of ``arr`` is finite, read ``rows`` rows at a time (a memory-mapped array stays so)."""
    return all(np.isfinite(arr[i:i + rows]).all() for i in range(0, len(arr), rows))


def _load_cached(folder: Path, key: dict) -> Features | None:
    """The cached features if ``folder`` holds a complete, intact cache for ``key``; None if absent. A stale or
    damaged cache is reported, removed and None returned (the caller extracts again)."""
    entry = cache_entry(folder, key)
    hit = entry.load(lambda meta: (meta["info"], _read_arrays(entry, meta)))
    if hit is None:
        return None
    info, arrays = hit
    if info["failed"]:  # images left out under on_error="skip": the runner lists them (helpers.events)
        events.record("skipped", dataset=key["dataset"], files=info["failed"])
    return Features(
        dataset=key["dataset"], model_id=key["model_id"], labels=arrays.pop("labels"), paths=info["paths"],
        classes=info["classes"], class_names=info["class_names"], failed=info["failed"],
        meta={**info, "key": key, "from_cache": True}, **{k: arrays.get(k) for k in KINDS},
    )


def _part_path(parts: Path, chunk_size: int, j: int) -> Path:
    return parts / f"chunk{chunk_size}-{j:06d}.npz"


def _load_part(path: Path, rows: range | None = None) -> dict[str, np.ndarray] | None:
    """A written chunk, or None when it is missing; a chunk cut short (or, given ``rows``, one that does not hold
    exactly these rows) is reported, removed and None returned (it is extracted again)."""
    def check(part):
        if rows is not None and not np.array_equal(np.sort(np.r_[part["index"], part["failed"]]), np.asarray(rows)):
            raise ValueError(f"it does not hold rows {rows.start}..{rows.stop - 1}")

    return load_chunk(path, "feature chunk", check, "extracting it again")


def _save_part(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_chunk(path, arrays)


def _discard_other_chunkings(parts: Path, chunk_size: int) -> None:
    stale = [p for p in parts.glob("chunk*.npz") if not p.name.startswith(f"chunk{chunk_size}-")]
    if stale:
        print(f"[features] discarding {len(stale)} chunk(s) of {parts.parent} written with another chunk size",
              flush=True)
        for p in stale:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ extraction
def _check_finite(k: str, v: torch.Tensor, ds: ImageFolderDataset, indices: torch.Tensor, model_id: str) -> None:
    if not torch.isfinite(v).all():
        rows = (~torch.isfinite(v.flatten(1)).all(1)).nonzero().flatten().tolist()
        names = [ds.samples[int(indices[i])].path for i in rows[:5]]
        raise NonFiniteError(f"NaN/inf in {k!r} features of {ds.name} for {len(rows)} image(s), e.g. {names}. "
                             f"Fix: run in fp32 (amp=False) or check the model weights ({model_id}).")


def _extract_chunk(visual, batches, n_batches: int, kinds, device, amp: bool, ds, model_id: str, bar):
    """Run ``n_batches`` batches of the loader iterator ``batches``; the chunk's arrays (features, row index,
    failed rows)."""
    acc: dict[str, list] = {k: [] for k in kinds}
    idx, failed = [], []
    for _ in range(n_batches):
        images, _, indices, bad = next(batches)
        failed += bad
        bar.update(len(indices) + len(bad))
        if images is None:
            continue
        with autocast(device, amp):
            out = encode_images(visual, images.to(device, non_blocking=True), kinds)
        for k, v in out.items():
            _check_finite(k, v, ds, indices, model_id)
            acc[k].append(v.to("cpu", torch.float16 if k == "local" else torch.float32).numpy())
        idx.append(indices.numpy())
    arrays = {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in acc.items()}
    arrays["index"] = np.concatenate(idx) if idx else np.zeros((0,), np.int64)
    arrays["failed"] = np.array(failed, dtype=np.int64)
    return arrays


@torch.inference_mode()
def extract_features(
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    *,
    kinds: tuple[str, ...] | list[str] = ("image", "preproj"),
    batch_size: int = 256,
    num_workers: int = 2,
    amp: bool = False,
    chunk_size: int = 2048,
    use_cache: bool = True,
    progress: bool = True,
    decode: str = "auto",
) -> Features:
    """Image features of ``dataset`` under ``loaded`` (see the module docstring), from the cache when possible.

    ``dataset`` is used with the model's own preprocessing (its transform is replaced). Undecodable images
    raise, or with ``dataset.on_error == "skip"`` are left out and listed in ``Features.failed``.
    ``num_workers`` DataLoader processes decode images; ``amp`` runs the model under autocast.
    ``decode`` (:data:`helpers.decode.DECODES`): ``"pil"`` decodes and preprocesses with PIL and the model's transform;
    ``"tensor"`` decodes JPEGs with ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA) and preprocesses with torch
    (:mod:`helpers.decode`; features differ slightly, and are cached separately); ``"auto"`` is ``"tensor"`` on
    CUDA and ``"pil"`` elsewhere.
    """
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, not {kinds}")
    kinds = tuple(k for k in KINDS if k in kinds)
    ds = dataset.with_transform(loaded.preprocess)
    device = loaded.device
    decode = resolve_decode(decode, device, loaded.preprocess)
    key = cache_key(loaded, ds, kinds, amp_precision(device, amp), decode)
    folder = cache_path(key)
    if use_cache and (hit := _load_cached(folder, key)) is not None:
        return hit

    rank, world = distributed.init()
    # another run extracting the same entry would remove the chunks this one reads: one builder at a time (under
    # torchrun rank 0 holds the lock for the job; the other ranks wait for it at the first barrier)
    with build_lock(folder, enabled=rank == 0):
        if use_cache and world == 1 and (hit := _load_cached(folder, key)) is not None:
            return hit  # built by the run we waited for
        return _extract(loaded, ds, folder, key, kinds, device, rank, world, batch_size, num_workers, amp,
                        chunk_size, progress, decode)


def _extract(loaded, ds, folder, key, kinds, device, rank, world, batch_size, num_workers, amp, chunk_size,
             progress, decode) -> Features:
    """Extract the chunks not written yet (this rank's share), merge them (rank 0) and load the result."""
    if world > 1 and device.type == "cuda":
        device = distributed.local_device(device)
        loaded.model.to(device)
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _discard_other_chunkings(parts, chunk_size)
    distributed.barrier()
    n = len(ds)
    chunks = [(j, range(s, min(s + chunk_size, n))) for j, s in enumerate(range(0, n, chunk_size))]
    todo = [(j, r) for j, r in chunks if j % world == rank and _load_part(_part_path(parts, chunk_size, j), r) is None]
    t0, done_images = time.time(), 0
    visual = loaded.model.visual
    visual.eval()
    batches = [list(r[i:i + batch_size]) for _, r in todo for i in range(0, len(r), batch_size)]
    loader, finish = _loader(ds, batches, num_workers, decode, loaded.preprocess, device)
    it = iter(loader)
    batches = it if finish is None else map(finish, it)  # the GPU decodes in the main process
    bar = tqdm(total=sum(len(r) for _, r in todo), desc=f"features {ds.name}", disable=not progress or rank != 0,
               mininterval=2)
    try:
        for j, r in todo:
            arrays = _extract_chunk(visual, batches, len(range(0, len(r), batch_size)), kinds, device, amp, ds,
                                    loaded.model_id, bar)
            done_images += len(arrays["index"])
            _save_part(_part_path(parts, chunk_size, j), arrays)
    except ClipOODError as e:  # raised in a worker, torch re-raises it with the worker's traceback as message
        if (clean := worker_error(e)) is None:
            raise
        raise clean from e
    finally:
        bar.close()
        shutdown_workers(it)  # now, also after an error in a worker (its __del__ would run later, and complain)
        del it, batches
    seconds = time.time() - t0
    distributed.barrier()
    if rank == 0:
        _merge(folder, key, ds, kinds, [_part_path(parts, chunk_size, j) for j, _ in chunks], seconds, done_images)
    distributed.barrier()
    res = _load_cached(folder, key)
    assert res is not None, f"merge of {folder} failed"
    res.meta["from_cache"] = False
    return res


_TRACEBACK = "Traceback (most recent call last):"


def worker_error(e: Exception) -> Exception | None:
    """The package error ``e`` as a DataLoader worker raised it: torch re-raises a worker's exception in the main
    process as ``type(e)("Caught X in DataLoader worker process N. Original Traceback ...")``; this rebuilds it with
    its own message (the last line of that traceback, which may span lines). None when ``e`` is no such error."""
    text = str(e)
    if not isinstance(e, ClipOODError) or not re.match(r"Caught \w+ in DataLoader worker process \d+", text):
        return None
    last = text[text.rfind(_TRACEBACK):]  # the worker's own exception, after the tracebacks of its causes
    head = re.search(rf"^(?:[\w.]+\.)?{re.escape(type(e).__name__)}: ", last, re.MULTILINE)
    if head is None:
        return None
    try:
        return type(e)(last[head.end():].strip())
    except TypeError:  # a constructor that takes more than a message
        return None


def shutdown_workers(it) -> None:
    """Stop the worker processes of DataLoader iterator ``it`` now (a no-op for a single-process iterator)."""
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        stop()


def _loader(ds: ImageFolderDataset, batches: list[list[int]], num_workers: int, decode: str, preprocess, device):
    """The DataLoader of the decode path, and the function that finishes its batches in the main process (None
    when the workers deliver finished batches)."""
    if decode == "tensor":
        return tensor_loader(ds, preprocess, device, batches, num_workers)
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_skip,
                                       persistent_workers=False), None


def _merge(folder: Path, key: dict, ds: ImageFolderDataset, kinds, part_paths: list[Path], seconds: float, n_new: int):
    parts = [_load_part(p) for p in part_paths]
    missing = [p.name for p, part in zip(part_paths, parts) if part is None]
    if missing:
        raise RuntimeError(f"feature chunks {missing} of {folder} are missing; run the extraction again to resume")
    index = np.concatenate([p["index"] for p in parts]).astype(np.int64)
    failed = sorted(int(i) for p in parts for i in p["failed"])
    covered = np.sort(np.r_[index, failed])
    if not np.array_equal(covered, np.arange(len(ds))):
        shutil.rmtree(folder / "parts", ignore_errors=True)
        raise RuntimeError(f"the feature chunks of {folder} do not cover the {len(ds)} images of {ds.name} exactly "
                           f"once ({len(covered)} rows); they were removed. Run the extraction again.")
    if len(index) == 0:
        raise CorruptImageError(f"none of the {len(ds)} images of {ds.name} at {ds.root} could be decoded.")
    arrays = {k: np.concatenate([p[k] for p in parts if len(p["index"])]) for k in kinds}
    arrays["labels"] = ds.labels[index]
    info = {"n": int(len(index)), "paths": [ds.samples[i].path for i in index],
            "failed": [ds.samples[i].path for i in failed], "classes": ds.classes, "class_names": ds.class_names,
            "extract_seconds": round(seconds, 3), "images_extracted": n_new,
            "images_per_second": round(n_new / seconds, 1) if seconds > 0 and n_new else None}
    entry = cache_entry(folder, key)
    entry.begin()
    write_arrays(entry, arrays)
    entry.commit(info)
    shutil.rmtree(folder / "parts", ignore_errors=True)


# ------------------------------------------------------------------------------------------ text
def _check_text_cache(arr: np.ndarray, n_classes: int, n_templates: int, ensemble: bool) -> np.ndarray:
    """``arr`` if it can be the cached embeddings asked for: the shape, finite, every vector of unit norm. (The
    file itself is checked against its recorded sha256 by :class:`helpers.cache.CacheEntry`.)"""
    want = (n_classes,) if ensemble else (n_classes, n_templates)
    if arr.ndim != len(want) + 1 or arr.shape[:-1] != want:
        raise ValueError(f"shape {arr.shape}, expected {want} + (dim,)")
    if not np.isfinite(arr).all():
        raise ValueError("it contains NaN/inf values")
    if not np.allclose(np.linalg.norm(arr.astype(np.float64), axis=-1), 1.0, atol=1e-3):
        raise ValueError("its vectors are not of unit norm")
    return arr


@torch.inference_mode()
def text_features(loaded: LoadedModel, class_names: list[str], templates: list[str], *, ensemble: bool = True,
                  batch_size: int = 1000, use_cache: bool = True) -> np.ndarray:
    """Normalised text embeddings of ``templates`` (format strings with ``{}``) filled with ``class_names``.

    ``ensemble=True`` returns (C, D): per class the mean of the normalised prompt embeddings, normalised
    again (CLIP's prompt ensembling, as PLP does). ``ensemble=False`` returns (C, T, D). Cached
    (:func:`helpers.cache.cached_arrays`, ``<cache>/text/``) keyed by the text tower, the names, the templates,
    ``ensemble`` and the code.

    A model with learned prompts (:func:`helpers.models.derive` with ``class_text``, e.g. CoOp) answers for
    exactly its class names with the learned embeddings, whatever the templates.
    """
    if loaded.class_text is not None and tuple(class_names) == loaded.class_text[0]:
        emb = loaded.class_text[1]
        return emb if ensemble else emb[:, None, :]
    key = {"model_id": loaded.text_id, "checkpoint_sha256": loaded.checkpoint_sha256, "names": list(class_names),
           "templates": list(templates), "ensemble": ensemble, "code": code_hash(text_features, _encode_text)}
    arrays, _, _ = cached_arrays(
        "text", loaded.text_id, key, lambda: ({"embeddings": _encode_text(loaded, class_names, templates, ensemble,
                                                                          batch_size)}, {}),
        what="text-embedding cache", use_cache=use_cache,
        check=lambda a, _: _check_text_cache(a["embeddings"], len(class_names), len(templates), ensemble))
    return arrays["embeddings"]


def _encode_text(loaded: LoadedModel, class_names, templates, ensemble: bool, batch_size: int) -> np.ndarray:
    prompts = [t.format(c) for c in class_names for t in templates]
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = loaded.tokenizer(prompts[i:i + batch_size]).to(loaded.device)
        out.append(F.normalize(loaded.model.encode_text(tokens).float(), dim=-1).cpu())
    emb = torch.cat(out).view(len(class_names), len(templates), -1)
    if ensemble:
        emb = F.normalize(emb.mean(1), dim=-1)
    arr = emb.numpy()
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"NaN/inf in text embeddings of {loaded.model_id}; check the weights.")
    return arr


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.features",
                                description="extract (and cache) image features; shards under torchrun")
    p.add_argument("--model", required=True, help="e.g. pocket:small, ViT-B-16/openai, ViT-B-32/random")
    p.add_argument("--dataset", nargs="+", required=True)
    p.add_argument("--kinds", nargs="+", default=["image", "preproj"], choices=KINDS)
    p.add_argument("--max-per-class", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--on-error", default="fail", choices=["fail", "skip"])
    p.add_argument("--decode", default="auto", choices=DECODES,
                   help="pil, tensor (torchvision decode_jpeg; nvJPEG on CUDA) or auto (tensor on CUDA)")
    p.add_argument("--out", help="also save the merged arrays to this .npz (rank 0)")
    args = p.parse_args(argv)
    try:
        _extract_cli(args)
    except ClipOODError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _extract_cli(args) -> None:
    distributed.init()  # under torchrun: join the group first, so each rank loads onto its own GPU
    loaded = load_model(args.model, device=distributed.local_device(args.device))
    for name in args.dataset:
        ds = get_dataset(name, max_per_class=args.max_per_class, on_error=args.on_error)
        feats = extract_features(loaded, ds, kinds=tuple(args.kinds), batch_size=args.batch_size,
                                 num_workers=args.workers, amp=args.amp, chunk_size=args.chunk_size,
                                 decode=args.decode)
        if distributed.is_main():
            print(f"{name}: {len(feats)} images, cached={feats.meta['from_cache']}, "
                  f"{feats.meta.get('images_per_second')} img/s")
            if args.out:
                np.savez(args.out, labels=feats.labels, **{k: getattr(feats, k) for k in args.kinds})


if __name__ == "__main__":
    sys.exit(main())
