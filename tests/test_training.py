"""The one training loop (helpers.training.fit) against a hand-written loop, its schedule, checkpoint/resume and AMP."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import training as train

X = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(1))


def _model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return torch.nn.Linear(5, 3)


def _objective(model, idx, ctx):
    noise = 0.1 * torch.randn(len(idx), 5, generator=ctx.gen)  # augmentation drawn from the run's generator
    logits = model(X[idx] + noise)
    return F.cross_entropy(logits, Y[idx]), {"acc": (logits.argmax(1) == Y[idx]).float().mean()}


def _fit(model, **kw):
    return train.fit(model, model.parameters(), _objective, train.Batches(37, 8, keep_last=True),
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                     schedule=train.schedule_warmup_cosine(2), epochs=3, seed=7, **kw)


def test_fit_equals_a_hand_written_loop():
    model = _model()
    run = _fit(model)
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    gen, total, step, losses = torch.Generator().manual_seed(7), 3 * 5, 0, []
    for _ in range(3):
        perm = torch.randperm(37, generator=gen)
        epoch_losses = []
        for b in range(5):
            idx = perm[b * 8:(b + 1) * 8]
            for g in opt.param_groups:
                g["lr"] = 0.5 * ((step + 1) / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / (total - 2))))
            loss = F.cross_entropy(ref(X[idx] + 0.1 * torch.randn(len(idx), 5, generator=gen)), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_losses.append(loss.item())
            step += 1
        losses.append(np.mean(epoch_losses))
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)
    assert run.steps == 15 and [h["epoch"] for h in run.history] == [0, 1, 2]
    np.testing.assert_allclose([h["loss"] for h in run.history], losses, rtol=1e-6)
    # the lr logged for an epoch is that of its last step
    assert run.history[0]["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 2 / 13)))


def test_batches_drop_or_keep_the_rest():
    assert train.Batches(37, 8).per_epoch == 4 and train.Batches(37, 8, keep_last=True).per_epoch == 5
    assert train.Batches(5, 8).per_epoch == 1  # one batch of all rows
    assert len(train.Batches(5, 8).batch(torch.arange(5), 0)) == 5
    with pytest.raises(ValueError, match="at least one row"):
        train.Batches(0, 8)


class _Counter:
    """Extra state an objective owns (a numpy generator): the checkpoint must keep it."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def state_dict(self):
        return {"state": str(self.rng.bit_generator.state["state"]["state"])}

    def load_state_dict(self, s):
        st = self.rng.bit_generator.state
        st["state"]["state"] = int(s["state"])
        self.rng.bit_generator.state = st


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    def run(model, extra, stop=None):
        def objective(m, idx, ctx):
            loss, metrics = _objective(m, idx, ctx)
            return loss * float(1 + extra.rng.random()), metrics

        def after(done):
            if done == stop:
                raise KeyboardInterrupt

        return train.fit(model, model.parameters(), objective, train.Batches(37, 8),
                         optimizer=lambda p: torch.optim.AdamW(p, lr=0.1), schedule=train.schedule_cosine,
                         epochs=2.5, seed=1, after_step=after, checkpoint=tmp_path / "ck.pt", checkpoint_every=3,
                         extra_state=[extra])

    whole = _model()
    full = run(whole, _Counter())
    assert not (tmp_path / "ck.pt").exists()  # removed after a finished run
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        run(model, _Counter(), stop=7)
    assert (tmp_path / "ck.pt").exists()  # written at step 6
    again = _model()
    resumed = run(again, _Counter())  # a fresh process: new model, new extra state, the checkpoint on disk
    assert full.steps == resumed.steps == 10
    assert torch.equal(whole.weight, again.weight) and torch.equal(whole.bias, again.bias)
    assert [h["loss"] for h in full.history] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-6)
    assert len(full.history) == 3  # two whole epochs of 4 batches and the half epoch's 2


def test_amp_runs_under_the_precision_it_resolves_to():
    model = _model()
    run = _fit(model, amp=True)
    assert run.precision == "bf16"  # CPU autocast; no loss scaler (that is for fp16 on CUDA)
    assert all(math.isfinite(h["loss"]) for h in run.history)
    assert _fit(_model(), amp=False).precision == "fp32"


def test_schedules_follow_their_formulas():
    f = train.schedule_warmup_cosine(2)
    assert [f(s, 10) for s in range(3)] == [0.5, 1.0, 1.0]
    assert f(9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert train.schedule_cosine(0, 4) == 1.0 and train.schedule_cosine(2, 4) == pytest.approx(0.5)
