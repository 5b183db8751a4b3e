"""Drop-in parity with lion-pytorch (its loop and foreach optimizers): same numbers, and checkpoints
that load in both directions. lion_core.reference (the seeds' formula) judges both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lion_pytorch import Lion as TheirLion
from lion_pytorch.foreach import Lion as TheirForeachLion

from lion_core.reference import reference_lion
from lion_torch import Lion
from tests.support import assert_close, assert_exact

from .helpers import EPS64, FLAGS, PATHS, assert_momentum, momenta, tensor, through_disk

THEIRS = {"loop": TheirLion, "foreach": TheirForeachLion}
SHAPES = [(6, 4), (11,), ()]


def _problem(seed, steps):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    return init, [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def _run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, p.dtype)
        opt.step()


def _budget(actual, expected, grads, index, what):
    """Both lion-pytorch optimizers round the momentum once per step where the reference rounds
    twice (add_ with alpha, or lerp): within 2 eps (|m| + (1 - beta2) max|g|) of it."""
    gmax = max(float(np.abs(g[index]).max()) for g in grads)
    assert_close(actual, expected, rtol=2 * EPS64, atol=2 * EPS64 * 0.01 * gmax, what=what)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("theirs", sorted(THEIRS))
@pytest.mark.parametrize("path", PATHS)
def test_same_numbers_as_lion_pytorch(path, theirs, weight_decay):
    init, grads = _problem(seed=1, steps=8)
    ours = [tensor(x, torch.float64, True) for x in init]
    their_params = [tensor(x, torch.float64, True) for x in init]
    opt = Lion(ours, lr=0.01, weight_decay=weight_decay, **FLAGS[path])
    their_opt = THEIRS[theirs](their_params, lr=0.01, weight_decay=weight_decay)
    _run(opt, ours, grads)
    _run(their_opt, their_params, grads)
    ref = reference_lion(init, grads, lr=0.01, weight_decay=weight_decay)
    for i, (p, q) in enumerate(zip(ours, their_params)):
        assert_exact(p, q, what=f"param {i}: ours vs lion-pytorch")
        assert_exact(p, ref.params[i], what=f"param {i}: ours vs reference")
        assert_momentum(path, opt.state[p]["exp_avg"], ref.momentum[i], grads=grads, index=i)
        _budget(their_opt.state[q]["exp_avg"], ref.momentum[i], grads, i, what=f"their momentum {i}")
    if path == "foreach" and theirs == "loop":
        # The same ATen arithmetic for the momentum (mul_, then add_ with alpha): bit for bit.
        for p, q in zip(ours, their_params):
            assert_exact(opt.state[p]["exp_avg"], their_opt.state[q]["exp_avg"], what="momentum vs theirs")


def test_decoupled_weight_decay_matches_lion_pytorch_for_one_group():
    """lion-pytorch divides by its constructor lr, ours by the group's max_lr: one group, same
    meaning; the products round in a different order, so within an ulp per step."""
    init, grads = _problem(seed=2, steps=8)
    ours = [tensor(x, torch.float64, True) for x in init]
    their_params = [tensor(x, torch.float64, True) for x in init]
    opt = Lion(ours, lr=0.01, weight_decay=0.5, decouple_lr=True)
    their_opt = TheirLion(their_params, lr=0.01, weight_decay=0.5, decoupled_weight_decay=True)
    _run(opt, ours, grads)
    _run(their_opt, their_params, grads)
    for i, (p, q) in enumerate(zip(ours, their_params)):
        assert_close(p, q, rtol=8 * EPS64, atol=0, what=f"param {i}")


@pytest.mark.parametrize("path", PATHS)
def test_lion_pytorch_checkpoint_continues_in_ours(path):
    init, grads = _problem(seed=3, steps=8)
    theirs = [tensor(x, torch.float64, True) for x in init]
    their_opt = TheirLion(theirs, lr=0.01, weight_decay=0.2)
    _run(their_opt, theirs, grads[:4])
    ours = [p.detach().clone().requires_grad_(True) for p in theirs]
    opt = Lion(ours, **FLAGS[path])
    opt.load_state_dict(through_disk(their_opt.state_dict()))
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.2
    _run(opt, ours, grads[4:])
    _run(their_opt, theirs, grads[4:])
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_exact(p, q, what=f"param {i}")
        _budget(opt.state[p]["exp_avg"], their_opt.state[q]["exp_avg"], grads, i, what=f"momentum {i}")
    if path == "foreach":
        for p, q in zip(ours, theirs):
            assert_exact(opt.state[p]["exp_avg"], their_opt.state[q]["exp_avg"], what="momentum")


@pytest.mark.parametrize("path", PATHS)
def test_our_checkpoint_continues_in_lion_pytorch(path):
    init, grads = _problem(seed=4, steps=8)
    ours = [tensor(x, torch.float64, True) for x in init]
    opt = Lion(ours, lr=0.01, weight_decay=0.2, **FLAGS[path])
    _run(opt, ours, grads[:4])
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    their_opt = TheirLion(theirs)
    their_opt.load_state_dict(through_disk(opt.state_dict()))
    _run(opt, ours, grads[4:])
    _run(their_opt, theirs, grads[4:])
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.2)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_exact(q, p, what=f"param {i}")
        assert_exact(q, ref.params[i], what=f"param {i} vs reference")
    for i, (m, n) in enumerate(zip(momenta(their_opt, theirs), momenta(opt, ours))):
        _budget(m, n, grads, i, what=f"momentum {i}")
