"""state_dict and load_state_dict: exact round trips, the momentum dtype, and clear refusals."""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import torch

from lion_torch import Lion
from tests.support import assert_exact

from .helpers import FLAGS, PATHS, momenta, tensor, through_disk, train


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_round_trip_mid_training_continues_bit_identically(path, dtype):
    rng = np.random.default_rng(0)
    shapes = [(4, 5), (), (9,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    options = dict(lr=0.01, weight_decay=0.1, cautious=True, decouple_lr=True, **FLAGS[path])
    params = [tensor(rng.standard_normal(s), dtype, True) for s in shapes]
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    opt = Lion(params, **options)
    train(params, opt, grads)

    # Reload into a fresh optimizer on copies of the parameters taken after 3 steps.
    reference = Lion(copies, **options)
    train(copies, reference, grads[:3])
    restored_params = [p.detach().clone().requires_grad_(True) for p in copies]
    restored = Lion(restored_params, lr=0.5, **FLAGS[path])  # the checkpoint's options win
    restored.load_state_dict(through_disk(reference.state_dict()))
    assert restored.param_groups[0]["lr"] == 0.01 and restored.param_groups[0]["cautious"]
    train(restored_params, restored, grads[3:])
    for p, q in zip(restored_params, params):
        assert_exact(q, p, what="params")
    for m, n in zip(momenta(restored, restored_params), momenta(opt, params)):
        assert m.dtype == n.dtype
        assert_exact(m, n, what="momentum")


def test_float32_momentum_of_bfloat16_parameters_stays_float32():
    """The saved group's momentum_dtype wins over the loading optimizer's default, exactly."""
    p = torch.zeros(5, dtype=torch.bfloat16, requires_grad=True)
    opt = Lion([p], lr=0.1, momentum_dtype=torch.float32)
    p.grad = torch.full((5,), 1e-3, dtype=torch.bfloat16)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    m = saved["state"][0]["exp_avg"]
    assert m.dtype == torch.float32 and m.to(torch.bfloat16).float().ne(m).any()  # not representable in bf16

    fresh = Lion([p.detach().clone().requires_grad_(True)], lr=0.1)
    fresh.load_state_dict(saved)
    loaded = fresh.state[fresh.param_groups[0]["params"][0]]["exp_avg"]
    assert loaded.dtype == torch.float32
    assert_exact(loaded, m)


def test_momentum_is_cast_to_this_optimizers_policy():
    """A checkpoint without momentum_dtype (lion-pytorch's) takes this optimizer's: a bfloat16
    momentum of a bfloat16 parameter is widened to float32 when asked, kept by default, and
    momentum_dtype is obeyed."""
    p = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    saved = {"state": {0: {"exp_avg": torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.0, "params": [0]}]}
    opt = Lion([p], momentum_dtype=torch.float32)
    opt.load_state_dict(saved)
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    default = Lion([p])
    default.load_state_dict(saved)
    assert default.state[p]["exp_avg"].dtype == torch.bfloat16
    q = torch.zeros(3, requires_grad=True)
    low = Lion([q], momentum_dtype=torch.bfloat16)
    low.load_state_dict({**saved, "state": {0: {"exp_avg": torch.ones(3)}}})
    assert low.state[q]["exp_avg"].dtype == torch.bfloat16


def test_groups_from_another_lion_keep_the_current_options():
    """lion-pytorch's groups hold lr, betas and weight_decay only; our other options stay as set."""
    p = torch.zeros(3, requires_grad=True)
    opt = Lion([p], lr=0.3, cautious=True, decouple_lr=True, max_lr=0.5, momentum_dtype=torch.float64)
    opt.load_state_dict({"state": {}, "param_groups": [
        {"lr": 0.1, "betas": (0.8, 0.9), "weight_decay": 0.2, "params": [0]}]})
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.1, (0.8, 0.9), 0.2)
    assert (group["cautious"], group["decouple_lr"], group["max_lr"]) == (True, True, 0.5)
    assert group["momentum_dtype"] == torch.float64


def test_adam_state_dict_is_refused():
    p = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    adam.step()
    opt = Lion([p])
    expected = ("Invalid `state_dict['state'][0].keys()`: expected ['exp_avg'], the state Lion keeps (is it "
                "another optimizer's?). "
                "Received: state_dict['state'][0].keys()=['exp_avg', 'exp_avg_sq', 'step']")
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.load_state_dict(adam.state_dict())
    assert len(opt.state) == 0


def test_mismatched_shape_is_refused():
    opt = Lion([torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)])
    saved = {"state": {1: {"exp_avg": torch.zeros(4)}}, "param_groups": [
        {**{k: v for k, v in opt.param_groups[0].items() if k != "params"}, "params": [0, 1]}]}
    expected = ("Invalid `state_dict['state'][1]['exp_avg'].shape`: expected (2, 2), the shape of its "
                "parameter. Received: state_dict['state'][1]['exp_avg'].shape=(4,)")
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.load_state_dict(saved)


def test_momentum_that_is_not_a_tensor_is_refused():
    opt = Lion([torch.zeros(3, requires_grad=True)])
    group = {"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.0, "params": [0]}
    saved = {"state": {0: {"exp_avg": [0.0, 0.0, 0.0]}}, "param_groups": [group]}
    expected = "Invalid `state_dict['state'][0]['exp_avg']`: expected a tensor"
    with pytest.raises(TypeError, match=re.escape(expected)):
        opt.load_state_dict(saved)


def test_wrong_number_of_groups_or_params_is_refused_by_torch():
    """torch.optim.Optimizer's own documented errors for these."""
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    two_groups = Lion([{"params": [a]}, {"params": [b]}]).state_dict()
    with pytest.raises(ValueError, match="loaded state dict has a different number of parameter groups"):
        Lion([a, b]).load_state_dict(two_groups)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        Lion([a]).load_state_dict(Lion([a, b]).state_dict())


def test_pickle_round_trip():
    p = torch.zeros(3, requires_grad=True)
    opt = Lion([p], lr=0.1, cautious=True, momentum_dtype=torch.float64)
    p.grad = torch.ones(3)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups[0]["cautious"] and clone.param_groups[0]["momentum_dtype"] == torch.float64
    (m,) = [s["exp_avg"] for s in clone.state.values()]
    assert_exact(m, opt.state[p]["exp_avg"])
