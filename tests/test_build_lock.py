"""Two runs that share a cache build each entry once: the lock around every cache build (helpers.io.build_lock).

Before the lock, two runs started together with a cold cache each extracted the same features (and one run's
merge removed the chunks the other still read), trained the same artifact twice, and left a pocket checkpoint
whose checksums came from one training and train.json from the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.cache import cached_tensors
from helpers.data import get_dataset
from helpers.features import extract_features
from helpers.io import build_lock
from helpers.models import load_model


def _folder(root, per_class=3, size=16):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _together(fn, n=2, stagger=0.3):
    """Run ``fn(i)`` in ``n`` threads started ``stagger`` s apart; their results in start order."""
    out, errors = [None] * n, []

    def call(i):
        try:
            out[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return out


def test_a_second_builder_waits_and_names_the_holder(tmp_path):
    target = tmp_path / "entry"
    code = ("import sys; from helpers.io import build_lock\n"
            f"with build_lock({str(target)!r}):\n    print('got it', flush=True)\n")
    with build_lock(target):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert child.poll() is None, "the second builder did not wait for the lock"
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out.splitlines() == [f"[cache] waiting for pid {os.getpid()}, which is building {target}", "got it"]


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    target = tmp_path / "entry"
    code = (f"import time; from helpers.io import build_lock\nwith build_lock({str(target)!r}):\n"
            f"    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    child.kill()
    child.wait(30)
    t0 = time.monotonic()
    with build_lock(target):
        pass
    assert time.monotonic() - t0 < 5


def test_concurrent_builds_of_one_artifact_build_it_once(tmp_cache):
    calls = []

    def build():
        calls.append(1)
        time.sleep(1.5)
        return {"w": torch.arange(6.0).reshape(2, 3) * len(calls)}, {"calls": len(calls)}

    res = _together(lambda i: cached_tensors("probes", "demo", {"k": 1}, build))
    assert len(calls) == 1, f"built {len(calls)} times"
    (wa, ia, hit_a), (wb, ib, hit_b) = res
    assert (hit_a, hit_b) == (False, True)
    torch.testing.assert_close(wa["w"], wb["w"])
    assert ia == ib == {"calls": 1}


def test_concurrent_extractions_of_one_dataset_extract_it_once(tmp_path, tmp_cache):
    vit = load_model("pocket-vit-xs", "random", image_size=32)
    ds = get_dataset(str(_folder(tmp_path / "imgs", per_class=6)))
    res = _together(lambda i: extract_features(vit, ds, kinds=("image",), batch_size=4, num_workers=0,
                                               chunk_size=4, progress=False), stagger=0.05)
    assert sorted(r.meta["from_cache"] for r in res) == [False, True]
    np.testing.assert_array_equal(res[0].image, res[1].image)
    assert res[0].paths == res[1].paths == ds.paths


def test_pocket_checkpoint_waits_for_a_training_in_progress(smoke_model):
    from helpers.cache import META
    from helpers.models.pocket import pocket_checkpoint

    out = Path(smoke_model.pretrained).parent
    meta = (out / META).read_bytes()
    (out / META).unlink()  # as while a training is writing its files: meta.json comes last
    got = []
    with build_lock(out):
        t = threading.Thread(target=lambda: got.append(pocket_checkpoint("tiny-100")))
        t.start()
        time.sleep(2)
        assert t.is_alive() and not got, "pocket_checkpoint read a checkpoint that another run was still writing"
        (out / META).write_bytes(meta)  # the training finishes
    t.join(120)
    assert got and got[0][1] == out / "open_clip_model.safetensors" and (out / META).read_bytes() == meta


def test_a_disabled_lock_takes_nothing(tmp_path):
    """A torchrun rank other than 0 takes no lock: it must not wait for the holder (its rank 0)."""
    with build_lock(tmp_path / "x"):
        t = threading.Thread(target=lambda: build_lock(tmp_path / "x", enabled=False).__enter__())
        t.start()
        t.join(5)
        assert not t.is_alive()
