"""Shared training pieces: the warm-up + cosine schedule and AdamW's weight-decay groups."""

import math

import torch

from helpers.torchtools import adamw_groups, autocast, warmup_cosine


def test_warmup_cosine_follows_the_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, total=10, warm=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * 1 / 2, 2.0 * 2 / 2] + [2.0 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert [round(x, 12) for x in lrs] == [round(x, 12) for x in expected]


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
