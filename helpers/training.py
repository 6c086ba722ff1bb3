r"""The one training loop: :func:`fit`. A method is its trainable parameters plus an objective.

Every model the package trains goes through :func:`fit`: the pocket CLIP's pretraining
(:mod:`helpers.models.pocket`), full fine-tuning (:mod:`helpers.finetune.full`), FLYP/CMA
(:mod:`helpers.finetune.cma`), CoOp/LoCoOp (:mod:`helpers.finetune.coop`), SeTAR+FT and LoRA
(:mod:`helpers.setar.finetune`) and the linear probes of PLP (:mod:`helpers.probes.linear`). A method supplies

- ``module``: the ``nn.Module`` whose forward the objective calls (wrapped in ``DistributedDataParallel`` under
  ``torchrun``, :mod:`helpers.distributed`); ``params``: what the optimiser moves (tensors or parameter groups);
- ``objective(model, idx, ctx) -> (loss, metrics)``: the loss of the batch of dataset rows ``idx`` (a tensor of
  indices), and a dict of numbers to log; ``ctx`` (:class:`Context`) carries the device and the random generator;
- ``batches`` (:class:`Batches`): how many rows an epoch shuffles and how it cuts them into batches;
- ``optimizer`` (a function of ``params``) and ``schedule`` (the factor of the peak learning rate at each step).

The loop owns what every method needs the same way: device placement (:func:`prepare`), mixed precision (autocast
as :func:`helpers.torchtools.amp_precision` resolves ``amp``, with a ``GradScaler`` for fp16), data parallelism,
seeding (a data generator and the global generator, restored after the run), progress, a per-epoch log of the
metrics' means and checkpoint/resume (``checkpoint``: a file written atomically every ``checkpoint_every`` steps;
a run that finds it continues from it and ends with the same weights as a run that was never interrupted).

It is nanoGPT's loop in spirit (``karpathy/nanoGPT`` ``train.py``): one short function, no callbacks beyond a hook
before and after a step. A trainer library (Lightning, HF ``Trainer``, ignite) would own the same things but would
also own the data loading and the model's device and dtype, which the DDP rule of :mod:`helpers.distributed`
(every rank draws the global batch, then keeps its slice) and the frozen-shared-weights rule of
:func:`helpers.torchtools.frozen` need to control; 150 lines here are easier to read than an adapter to one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .io import atomic_path
from .torchtools import amp_precision, autocast

Objective = Callable[[torch.nn.Module, torch.Tensor, "Context"], tuple[torch.Tensor, dict]]


@dataclass
class Batches:
    """An epoch is one random permutation of ``n`` rows cut into batches of ``batch_size``. ``keep_last=False``:
    ``n // batch_size`` full batches (the rest is dropped; one batch of all rows when ``n < batch_size``);
    ``True``: ``ceil(n / batch_size)`` batches, the last one smaller."""

    n: int
    batch_size: int
    keep_last: bool = False

    def __post_init__(self):
        if self.n < 1 or self.batch_size < 1:
            raise ValueError(f"need at least one row and a batch size >= 1; got n={self.n}, "
                             f"batch_size={self.batch_size}")

    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size) if self.keep_last else max(1, self.n // self.batch_size)

    def batch(self, perm: torch.Tensor, b: int) -> torch.Tensor:
        return perm[b * self.batch_size:(b + 1) * self.batch_size]


@dataclass
class Context:
    """What an objective may use besides its batch: the ``device``, the run's random ``gen`` (draw augmentation
    from it, so that a seed fixes the run and a resumed run continues the stream), the ``step`` (0-based) and the
    number of steps ``total``."""

    device: torch.device
    gen: torch.Generator
    step: int = 0
    total: int = 0


@dataclass
class Fitted:
    """A finished run: ``history`` (one row per epoch: ``epoch`` from 0, ``lr`` of its last step, the mean of the
    loss and of every metric), ``log`` (every ``log_every`` steps: ``step``, ``loss``, ``seconds``), the number
    of ``steps``, the training ``seconds`` and ``precision`` (``fp32``, ``bf16`` or ``fp16``)."""

    history: list[dict] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    precision: str = "fp32"


def prepare(device: torch.device | str) -> torch.device:
    """Join the process group when launched by torchrun and return this process's device (its own GPU under
    torchrun): call it before building the model the run trains."""
    distributed.init()
    return distributed.local_device(device)


def schedule_warmup_cosine(warm: int) -> Callable[[int, int], float]:
    """Linear warm-up to the peak over ``warm`` steps (factor ``(s + 1) / warm``), then cosine decay to 0."""
    return lambda s, total: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))


def schedule_cosine(s: int, total: int) -> float:
    """Cosine decay from the peak at step 0 to 0 at ``total`` (``CosineAnnealingLR`` stepped per step)."""
    return 0.5 * (1 + math.cos(math.pi * s / total))


def fit(module: torch.nn.Module, params: Iterable, objective: Objective, batches: Batches, *,
        optimizer: Callable[[list], torch.optim.Optimizer], schedule: Callable[[int, int], float] | None = None,
        epochs: float = 1, device: torch.device | str = "cpu", amp: bool | str = False, seed: int = 0,
        generator: torch.Generator | None = None, seed_global: bool = True, desc: str = "train",
        progress: bool = False, log_every: int = 0, before_step: Callable[[int], None] | None = None,
        after_step: Callable[[int], None] | None = None, train_mode: bool = True, checkpoint: str | Path | None = None,
        checkpoint_every: int = 0, extra_state: Sequence = ()) -> Fitted:
    """Train ``params`` of ``module`` on ``objective`` for ``epochs`` (fractions allowed) of ``batches``; see the
    module docstring. ``schedule(step, total)`` is the factor of the optimiser's learning rate (None: constant).
    ``generator``: the data generator (default ``torch.Generator().manual_seed(seed)``); the global generator is
    seeded with ``seed`` for the run and restored after it, unless ``seed_global=False`` (the run continues the
    caller's stream, e.g. right after the model's seeded initialisation). ``before_step(s)`` / ``after_step(s)``
    run before step ``s`` (0-based) and after ``s`` steps are done. ``train_mode=False`` trains with the module in
    eval mode (no dropout: updates of a frozen model). ``extra_state``: objects with
    ``state_dict``/``load_state_dict`` (an objective's own random state) that the checkpoint keeps too."""
    device = prepare(device)
    module.to(device)
    total = int(round(epochs * batches.per_epoch))  # 0 epochs: the module as it was built
    precision = amp_precision(device, amp)
    model = distributed.wrap(module)
    opt = optimizer(list(params))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, (lambda s: schedule(s, max(1, total))) if schedule else (lambda s: 1.0))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run = Fitted(precision=precision)
    with torch.random.fork_rng(devices=[]):
        if seed_global:
            torch.manual_seed(seed)
        ctx = Context(device, generator if generator is not None else torch.Generator().manual_seed(seed), 0, total)
        loop = _Loop(module, opt, sched, scaler, ctx, batches, run, list(extra_state))
        if checkpoint is not None:
            loop.resume(Path(checkpoint))
        bar = tqdm(total=total, initial=ctx.step, desc=desc, mininterval=2,
                   disable=not progress or not distributed.is_main())
        t0 = time.time() - run.seconds
        module.train(train_mode)
        while ctx.step < total:
            if before_step:
                before_step(ctx.step)
            loss = loop.step(model, objective, precision)
            run.seconds = time.time() - t0
            if log_every and (ctx.step % log_every == 0 or ctx.step == total):
                run.log.append({"step": ctx.step, "loss": round(loss, 4), "seconds": round(run.seconds, 1)})
                bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
            if after_step:
                after_step(ctx.step)
            if checkpoint is not None and checkpoint_every and ctx.step % checkpoint_every == 0 and ctx.step < total:
                loop.save(Path(checkpoint))
        bar.close()
        loop.end_epoch()
    module.eval()
    run.steps = total
    if checkpoint is not None and distributed.is_main():
        Path(checkpoint).unlink(missing_ok=True)
    return run


class _Loop:
    """The state of a run between steps: the epoch's permutation and position, the metric sums, and how to save and
    restore all of it."""

    def __init__(self, module, opt, sched, scaler, ctx: Context, batches: Batches, run: Fitted, extra: list):
        self.module, self.opt, self.sched, self.scaler, self.ctx = module, opt, sched, scaler, ctx
        self.batches, self.run, self.extra = batches, run, extra
        self.perm, self.b, self.epoch, self.sums, self.count = None, 0, 0, {}, 0

    def step(self, model, objective: Objective, precision: str) -> float:
        if self.perm is None:
            self.perm, self.b = torch.randperm(self.batches.n, generator=self.ctx.gen), 0
        idx = self.batches.batch(self.perm, self.b)
        with autocast(self.ctx.device, precision != "fp32"):
            loss, metrics = objective(model, idx, self.ctx)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        lr = self.opt.param_groups[0]["lr"]
        if self.ctx.step + 1 < self.ctx.total:  # the schedule is defined on steps 0 .. total - 1
            self.sched.step()
        value = float(loss.detach())
        for k, v in {"loss": value, **metrics}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        self.count, self.lr = self.count + 1, lr
        self.b, self.ctx.step = self.b + 1, self.ctx.step + 1
        if self.b == self.batches.per_epoch:
            self.end_epoch()
        return value

    def end_epoch(self) -> None:
        if self.count:
            self.run.history.append({"epoch": self.epoch, "lr": self.lr,
                                     **{k: v / self.count for k, v in self.sums.items()}})
            self.epoch, self.sums, self.count = self.epoch + 1, {}, 0
        self.perm = None

    def save(self, path: Path) -> None:
        if not distributed.is_main():
            return
        state = {"step": self.ctx.step, "module": self.module.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "gen": self.ctx.gen.get_state(), "global_rng": torch.get_rng_state(), "perm": self.perm,
                 "loop": json.dumps({"b": self.b, "epoch": self.epoch, "sums": self.sums, "count": self.count,
                                     "lr": getattr(self, "lr", None), "history": self.run.history,
                                     "log": self.run.log, "seconds": self.run.seconds,
                                     "extra": [e.state_dict() for e in self.extra]})}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".pt") as tmp:
            torch.save(state, tmp)

    def resume(self, path: Path) -> None:
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.ctx.gen.set_state(state["gen"])
        torch.set_rng_state(state["global_rng"])
        loop = json.loads(state["loop"])
        self.ctx.step, self.perm, self.b, self.epoch = state["step"], state["perm"], loop["b"], loop["epoch"]
        self.sums, self.count, self.lr = loop["sums"], loop["count"], loop["lr"]
        self.run.history[:], self.run.log[:], self.run.seconds = loop["history"], loop["log"], loop["seconds"]
        for obj, s in zip(self.extra, loop["extra"]):
            obj.load_state_dict(s)
        print(f"[train] resuming from {path} at step {self.ctx.step}", flush=True)
