"""Data-parallel training (helpers.distributed): under ``torchrun`` with 2 gloo processes on CPU, full fine-tuning,
CMA and SeTAR+FT give the single-process weights and losses (within the float rounding of encoding a batch in
slices), every rank returns the same weights, rank 0's cache entry is the one a single process finds; the gathered
loss's gradient on unequal slices is the full-batch gradient, checked against its closed form.

Run as a script by ``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/test_distributed.py OUT``), this file is the worker: each rank saves what it trained to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import distributed, setar
from helpers.data import get_dataset
from helpers.finetune import cma_loss, contrastive_finetune, finetune_image_tower

# Measured on CPU (torch 2.14, fp32), 2 gloo processes against one: weights differ by ≤ 3.2e-7 (full fine-tuning:
# AdamW turns the rounding of tiny gradients, e.g. conv1's, into larger steps), 5.2e-8 (CMA), 3.0e-8 (SeTAR+FT);
# the logged epoch losses by ≤ 1.2e-7. The bounds are about 6-30 times that; the weights move by 3e-4 to 3e-3.
WEIGHT_TOL = {"full": 2e-6, "cma": 1e-6, "setar": 1e-6}
LOSS_TOL = 1e-6
# 40 training images in batches of 15: two batches per epoch, slices of 8 and 7 images (SeTAR+FT's last batch
# of 10: 5 and 5). Mixup/CutMix (defaults), random crops and flips are all on (SeTAR+FT: each rank reads and crops
# only its slice's image files).
FULL = dict(epochs=2, batch_size=15, lr=1e-3, augment=True, seed=1)
CMA = dict(lam=0.5, epochs=2, batch_size=15, lr=1e-4, warmup=1, seed=0)
SETAR = dict(epochs=2, batch_size=15, lr=0.05)
EDIT = {("visual", 1): 0.25, ("text", 0): 0.1}


def _train_set():
    return get_dataset("cifar10-probe", max_per_class=4)


def run_full(loaded) -> dict:
    text = F.normalize(torch.randn(10, loaded.model.text_projection.shape[1],
                                   generator=torch.Generator().manual_seed(0)), dim=-1).numpy()
    ft = finetune_image_tower(loaded, _train_set(), text, **FULL)
    tensors = {f"visual.{k}": v for k, v in ft.loaded.model.visual.state_dict().items()}
    tensors.update({"head.weight": torch.from_numpy(ft.loaded.head[0]), "head.bias": torch.from_numpy(ft.loaded.head[1])})
    return {"tensors": tensors, "losses": [h["loss"] for h in ft.history], "from_cache": ft.from_cache}


def run_cma(loaded) -> dict:
    ft = contrastive_finetune(loaded, _train_set(), **CMA)
    tensors = {k: v.clone() for k, v in ft.loaded.model.state_dict().items()}
    return {"tensors": tensors, "losses": [h["loss"] for h in ft.history], "from_cache": ft.from_cache}


def run_setar(loaded) -> dict:
    split = setar.make_split(loaded, _train_set())
    edited = setar.setar_model(loaded, EDIT)
    tuned, log = setar.finetuned_model(edited, loaded, setar.setar_factors(loaded, EDIT), "setar-ft", split.images,
                                       split.labels, split.tokens, dataset=split.dataset, **SETAR)
    params = dict(tuned.model.named_parameters())
    return {"tensors": {n: params[n].detach().clone() for n in setar.setar_factors(loaded, EDIT)},
            "losses": [row["loss"] for row in log], "from_cache": None}


RUNS = {"full": run_full, "cma": run_cma, "setar": run_setar}


def _comparable(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` without the key bias (the middle third of an attention's ``in_proj_bias``): its exact gradient is 0
    (a softmax over keys ignores a shift common to a query's logits), so AdamW normalises rounding noise into full
    steps of random sign, different for any two summation orders (one process or two: ~3e-4 after 4 steps)."""
    if name.endswith("attn.in_proj_bias"):
        d = len(t) // 3
        return torch.cat([t[:d], t[2 * d:]])
    return t


def _toy():
    """A linear classifier and a two-tower linear pair on a global batch of 5 (unequal slices 3 + 2 on 2 ranks)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 4, generator=gen), torch.tensor([0, 2, 1, 2, 0])
    lin, img, txt = (torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3))
    for m in (lin, img, txt):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    return x, y, lin, torch.nn.ModuleDict({"img": img, "txt": txt})


class _Pair(torch.nn.Module):
    def __init__(self, towers):
        super().__init__()
        self.towers = towers

    def forward(self, x):
        return self.towers["img"](x), self.towers["txt"](x.flip(1))


def _pair_loss(a, b):
    return cma_loss(3.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T, lam=0.5)


def toy_gradients() -> dict:
    """Gradients after one backward pass through DDP with the losses of the gathered global batch."""
    x, y, lin, towers = _toy()
    model = distributed.wrap(lin)
    F.cross_entropy(distributed.all_gather_with_grad(model(distributed.shard(x))), y).backward()
    pair = distributed.wrap(_Pair(towers))
    a, b = pair(distributed.shard(x))
    _pair_loss(distributed.all_gather_with_grad(a), distributed.all_gather_with_grad(b)).backward()
    return {"bounds": distributed.shard_bounds(len(x)), "lin": {k: p.grad for k, p in lin.named_parameters()},
            "pair": {k: p.grad for k, p in towers.named_parameters()}}


def _worker(out: Path) -> None:
    from helpers.models import load_model

    rank, world = distributed.init("gloo")
    loaded = load_model("pocket:tiny-100")  # from the usual cache; the training caches go to a fresh folder
    os.environ["CLIPOOD_CACHE"] = os.environ["DDP_TEST_CACHE"]
    res = {"world": world, "toy": toy_gradients(), **{name: run(loaded) for name, run in RUNS.items()}}
    torch.save(res, out / f"rank{rank}.pt")


# ------------------------------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def ddp(smoke_model, tmp_path_factory):
    """One torchrun launch of 2 gloo processes running every method: (their cache folder, [rank 0, rank 1])."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_TEST_CACHE": str(out / "cache"), "CLIPOOD_DIST_BACKEND": "gloo"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "cache", [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_one_process_is_the_identity(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    x, lin = torch.randn(5, 4), torch.nn.Linear(4, 3)
    assert distributed.init() == (0, 1) and distributed.is_main()
    assert distributed.wrap(lin) is lin and distributed.all_gather_with_grad(x) is x
    assert distributed.shard(x) is not None and torch.equal(distributed.shard(x), x)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_shard_bounds_follow_array_split(monkeypatch):
    for world in (1, 2, 3, 4):
        for n in range(world, 12):
            expected = np.array_split(np.arange(n), world)
            for rank in range(world):
                monkeypatch.setenv("RANK", str(rank))
                monkeypatch.setenv("WORLD_SIZE", str(world))
                start, stop = distributed.shard_bounds(n)
                assert list(range(start, stop)) == expected[rank].tolist()
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        distributed.shard_bounds(3)


def test_gathered_loss_on_unequal_slices_gives_the_full_batch_gradient(ddp):
    _, ranks = ddp
    x, y, lin, towers = _toy()
    # closed form of the mean cross-entropy's gradient for z = W x + b: (softmax(z) - onehot)ᵀ X / B
    r = (torch.softmax(lin(x), 1) - F.one_hot(y, 3)).detach() / len(x)
    a, b = _Pair(towers)(x)
    _pair_loss(a, b).backward()  # brute force: the full batch in one process
    assert [ranks[0]["toy"]["bounds"], ranks[1]["toy"]["bounds"]] == [(0, 3), (3, 5)]
    for res in ranks:
        torch.testing.assert_close(res["toy"]["lin"]["weight"], r.T @ x, rtol=0, atol=1e-6)
        torch.testing.assert_close(res["toy"]["lin"]["bias"], r.sum(0), rtol=0, atol=1e-6)
        for k, p in towers.named_parameters():
            torch.testing.assert_close(res["toy"]["pair"][k], p.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", list(RUNS))
def test_torchrun_training_equals_one_process(method, ddp, smoke_model, tmp_cache, monkeypatch):
    cache, ranks = ddp
    one = RUNS[method](smoke_model)
    r0, r1 = ranks[0][method], ranks[1][method]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert r0["tensors"].keys() == r1["tensors"].keys() == one["tensors"].keys()
    assert all(torch.equal(r0["tensors"][k], r1["tensors"][k]) for k in r0["tensors"])  # every rank, same weights
    moved = max(float((one["tensors"][k] - smoke_model.model.state_dict()[k]).abs().max())
                for k in one["tensors"] if k in smoke_model.model.state_dict())
    diff = max(float((_comparable(k, r0["tensors"][k]) - _comparable(k, one["tensors"][k])).abs().max())
               for k in one["tensors"])
    print(f"{method}: max |DDP - one process| = {diff:.1e} (weights moved up to {moved:.1e})")
    assert diff <= WEIGHT_TOL[method] < moved / 100, (diff, moved)  # the check is far below the training's change
    assert np.allclose(r0["losses"], one["losses"], rtol=0, atol=LOSS_TOL), (r0["losses"], one["losses"])
    assert r0["losses"] == r1["losses"]
    # rank 0 wrote the cache entry a single process finds (same key, same weights)
    monkeypatch.setenv("CLIPOOD_CACHE", str(cache))
    again = RUNS[method](smoke_model)
    assert all(torch.equal(again["tensors"][k], r0["tensors"][k]) for k in r0["tensors"])
    if method != "setar":
        assert again["from_cache"] and not r0["from_cache"]
    assert len(list((cache / {"full": "finetune"}.get(method, method)).iterdir())) == 1


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
