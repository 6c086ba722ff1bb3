"""Shared torch pieces: AdamW's weight-decay groups, autocast and its precision, freezing a module."""

import dataclasses

import pytest
import torch

from helpers import torchtools
from helpers.torchtools import adamw_groups, amp_precision, autocast, frozen


def test_adamw_groups_decay_only_weight_matrices():
    model = torch.nn.ModuleDict({"token_embedding": torch.nn.Embedding(5, 3), "fc": torch.nn.Linear(3, 2),
                                 "ln": torch.nn.LayerNorm(2)})
    decay, rest = adamw_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [model["fc"].weight.shape]
    assert {id(p) for p in rest["params"]} == {id(model["token_embedding"].weight), id(model["fc"].bias),
                                               id(model["ln"].weight), id(model["ln"].bias)}


def test_autocast_is_a_no_op_when_disabled():
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), False):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), True):
        assert (x @ x).dtype == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    # emulated bf16 made the pocket CLIP train 20x slower than fp32: "auto" must fall back to fp32 there
    monkeypatch.setattr(torchtools, "native_bf16", lambda: native)
    x = torch.ones(2, 2)
    assert amp_precision("cpu", "auto") == ("bf16" if native else "fp32")
    with autocast(torch.device("cpu"), "auto"):
        assert (x @ x).dtype == (torch.bfloat16 if native else torch.float32)
    assert amp_precision("cuda", "auto") == "fp16" and amp_precision("cuda", False) == "fp32"
    assert amp_precision("cpu", True) == "bf16" and amp_precision("cpu", False) == "fp32"  # forced either way
    with pytest.raises(ValueError, match="expected True, False or 'auto'"):
        amp_precision("cpu", "yes")


def test_pocket_cache_key_follows_the_precision_auto_resolves_to(monkeypatch):
    from helpers.models.pocket import CONFIGS

    cfg = CONFIGS["tiny-100"]
    assert cfg.amp == "auto"
    keys = {}
    for native in (True, False):
        monkeypatch.setattr(torchtools, "native_bf16", lambda native=native: native)
        keys[native] = cfg.key([["fingerprint"]])
    assert keys[True] != keys[False]  # bf16 and fp32 training give different weights: never one cache entry
    forced = dataclasses.replace(cfg, amp=False)
    assert forced.key([["fingerprint"]]) == keys[False]  # what it resolves to, not how it was asked for


def _flags(params):
    return [p.requires_grad for p in params]


def test_frozen_trains_only_the_given_parameters_and_restores_every_flag():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)  # a flag that was already off stays off afterwards
    extra = torch.nn.Parameter(torch.zeros(2))  # trainable, not part of the module
    extra.requires_grad_(False)
    before = _flags([*model.parameters(), extra])
    assert before == [True, True, True, False, False]
    with frozen(model, [model[0].bias, extra]) as inside:
        assert inside is model
        assert _flags([*model.parameters(), extra]) == [False, True, False, False, True]
        (model(torch.ones(1, 3)).sum() + extra.sum()).backward()
        assert model[0].weight.grad is None and model[1].weight.grad is None
        assert model[0].bias.grad is not None and torch.equal(extra.grad, torch.ones(2))
    assert _flags([*model.parameters(), extra]) == before
    with frozen(model):
        assert not any(_flags(model.parameters()))
    assert _flags([*model.parameters(), extra]) == before


def test_frozen_restores_the_flags_after_an_exception():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with frozen(model, [model.bias]):
            assert _flags(model.parameters()) == [False, True]
            raise RuntimeError("inside")
    assert _flags(model.parameters()) == [True, True]
