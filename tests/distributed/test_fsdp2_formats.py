"""lion_torch's state formats across processes: FSDP2 (2 gloo ranks) and DistributedLion refuse them.

An 8-bit momentum's blocks and the random bits of stochastic rounding are defined on a tensor's
whole flat index, which a DTensor's local shard does not have, so ``lion_torch.Lion`` refuses
``momentum_dtype="int8"`` (and ``stochastic_rounding=True`` for bfloat16 parameters) for DTensor
parameters at construction, and when such a group is added, rather than compute other bits than an
unsharded run would. ``stochastic_rounding=True`` on float32 DTensors rounds to nearest (there is
nothing to round stochastically) and trains. ``DistributedLion`` votes on float momenta and has
neither format: it refuses both at construction.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lion_torch import Lion
from tests.distributed.launch import run_ranks


def _construct(rank: int, world_size: int) -> dict[str, str]:
    mesh = init_device_mesh("cpu", (world_size,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    fully_shard(model, mesh=mesh)
    errors = {}
    for name, options in {"int8": {"momentum_dtype": "int8"},
                          "bf16": {"stochastic_rounding": True}}.items():
        params = list(model.parameters())
        if name == "bf16":
            model.to(torch.bfloat16)
            params = list(model.parameters())
        try:
            Lion(params, seed=0, **options)
        except RuntimeError as error:
            errors[name] = str(error)
    opt = Lion([{"params": list(model.parameters())[:1]}], seed=0)
    try:
        opt.add_param_group({"params": list(model.parameters())[1:], "momentum_dtype": "int8"})
    except RuntimeError as error:
        errors["group"] = str(error)
    errors["groups_kept"] = str(len(opt.param_groups))
    model.to(torch.float32)
    loss = model(torch.ones(3, 4)).sum()
    loss.backward()
    opt = Lion(model.parameters(), stochastic_rounding=True, seed=0)  # float32: nearest, allowed
    opt.step()
    return errors


def test_int8_momentum_and_stochastic_rounding_of_dtensors_are_refused_naming_the_parameter():
    for errors in run_ranks(_construct, 2):
        assert errors["int8"] == (
            "`momentum_dtype='int8'` and `stochastic_rounding=True` are not supported for DTensor parameters "
            "(FSDP2's fully_shard): their 8-bit blocks and random bits are defined on the whole tensor's "
            "flat index, which a local shard does not have. Received: momentum_dtype='int8', "
            "stochastic_rounding=False for param_groups[0]['params'][0], a DTensor of shape (6, 4) and "
            "dtype torch.float32"
        )
        assert errors["bf16"].endswith(
            "Received: momentum_dtype=None, stochastic_rounding=True for param_groups[0]['params'][0], "
            "a DTensor of shape (6, 4) and dtype torch.bfloat16"
        )
        assert "for param_groups[1]['params'][0], a DTensor of shape (6,)" in errors["group"]
        assert errors["groups_kept"] == "1"


def _distributed_lion(rank: int, world_size: int) -> list[str]:
    from lion_torch import DistributedLion

    errors = []
    for options in ({"momentum_dtype": "int8"}, {"momentum_dtype": torch.int8}):
        try:
            DistributedLion([torch.nn.Parameter(torch.zeros(3))], **options)
        except RuntimeError as error:
            errors.append(str(error))
    opt = DistributedLion([torch.nn.Parameter(torch.zeros(3))])
    try:
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "stochastic_rounding": True})
    except RuntimeError as error:
        errors.append(str(error))
    errors.append(str(len(opt.param_groups)))
    return errors


def test_distributed_lion_refuses_the_state_formats():
    (errors,) = run_ranks(_distributed_lion, 1)
    expected = ("DistributedLion has no 8-bit momentum or stochastic rounding (lion_torch.Lion has them). "
                "Received: ")
    assert errors == [
        expected + "momentum_dtype='int8', stochastic_rounding=False",
        expected + "momentum_dtype='int8', stochastic_rounding=False",
        expected + "momentum_dtype=None, stochastic_rounding=True",
        "1",
    ]
