"""FSDP2 (``fully_shard`` per layer and at the root) + ``lion_torch.Lion`` on 2 gloo ranks.

Each configuration trains on the ranks' batches and is compared with one unsharded process training on
the concatenated batches (``tests.distributed.models.single_process``):

* float64: FSDP2's reduce-scatter averages the ranks' gradients, which differs from the one-process
  gradient by rounding only; the parameter update reads only the sign of ``c``, so the parameters
  are bit-identical (as under DDP) and the momenta agree to 1e-12.
* ``cautious=True``, float64: the mask's rescaling ``n / n_kept`` must be taken over the whole
  parameter, not over one rank's shard (a DTensor mean all-reduces). The sharded mean is the sum of
  the shards' sums, rounded differently from one sum over the tensor, so the rescaled update may
  differ in its last bit: budget 1e-14 absolute on parameters of size ~1 (one rank normalising by
  its own shard's kept fraction would be off by ~1e-3).
* ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``, float32 parameters: forward and
  backward run in bfloat16 on each rank's batch, which no single process reproduces bit for bit.
  The unsharded model runs its forward and backward in bfloat16 on the concatenated batch and
  Lion updates its float32 parameters. Budget: bfloat16 gradients differ by ~1e-2 relative, so a
  sign flips where ``|c|`` is that small; at most 10% of elements differ, each by at most
  ``2 * lr * steps`` plus float32 rounding.

Every rank's momentum is a DTensor with its parameter's placements and local shape.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from lion_torch import Lion
from tests.distributed.launch import run_ranks
from tests.distributed.models import (
    HYPER,
    PATHS,
    global_batch,
    loss_fn,
    make_model,
    mismatch,
    rank_batch,
    single_process,
)

STEPS = 5
WORLD = 2
CONFIGS: dict[str, dict[str, Any]] = {
    "float64": {"dtype": torch.float64, "cautious": False, "mixed": False},
    "cautious": {"dtype": torch.float64, "cautious": True, "mixed": False},
    "bf16-params-fp32-reduce": {"dtype": torch.float32, "cautious": False, "mixed": True},
}
def shard(model: torch.nn.Sequential, world_size: int, mixed: bool) -> torch.nn.Sequential:
    mesh = init_device_mesh("cpu", (world_size,))
    options: dict[str, Any] = {"mesh": mesh}
    if mixed:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def _train(rank: int, world_size: int, path: str, config: str) -> dict[str, object]:
    cfg = CONFIGS[config]
    model = shard(make_model(cfg["dtype"]), world_size, cfg["mixed"])
    opt = Lion(model.parameters(), **HYPER, **PATHS[path], cautious=cfg["cautious"])
    for step in range(STEPS):
        loss_fn(model, *rank_batch(step, rank, world_size, cfg["dtype"])).backward()
        opt.step()
        opt.zero_grad()
    layouts = []
    for p in model.parameters():
        m = opt.state[p]["exp_avg"]
        layouts.append(
            isinstance(m, DTensor)
            and m.placements == p.placements
            and m.to_local().shape == p.to_local().shape
        )
    return {
        "params": [p.full_tensor().detach().clone() for p in model.parameters()],
        "momentum": [opt.state[p]["exp_avg"].full_tensor().clone() for p in model.parameters()],
        "layouts": layouts,
    }


def _bf16_single_process(path: str, steps: int) -> list[torch.Tensor]:
    """The unsharded model with FSDP2's mixed precision: bf16 forward/backward, fp32 parameters and Lion."""
    master = make_model(torch.float32)
    opt = Lion(master.parameters(), **HYPER, **PATHS[path])
    for step in range(steps):
        low = make_model(torch.bfloat16)
        with torch.no_grad():
            for q, p in zip(low.parameters(), master.parameters()):
                q.copy_(p)
        x, y = (t.to(torch.bfloat16) for t in global_batch(step, WORLD, torch.float32))
        loss_fn(low, x, y).backward()
        for q, p in zip(low.parameters(), master.parameters()):
            p.grad = q.grad.float()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in master.parameters()]


def _cases() -> list[object]:
    return [pytest.param(path, config, id=f"{path}-{config}") for path in PATHS for config in CONFIGS]


@pytest.mark.parametrize(("path", "config"), _cases())
def test_fsdp2_matches_the_unsharded_model(path: str, config: str) -> None:
    results = run_ranks(_train, WORLD, args=(path, config))
    assert all(all(r["layouts"]) for r in results), "a momentum is not a DTensor sharded like its parameter"
    for i, (a, b) in enumerate(zip(results[0]["params"], results[1]["params"])):
        assert torch.equal(a, b), f"param {i} differs between ranks: {mismatch(a, b)}"
    if CONFIGS[config]["mixed"]:
        expected = _bf16_single_process(path, STEPS)
        lr = HYPER["lr"]
        for actual, want in zip(results[0]["params"], expected):
            assert (actual != want).float().mean() <= 0.10, mismatch(actual, want)
            assert (actual - want).abs().max() <= 2 * lr * STEPS + 1e-5, mismatch(actual, want)
        return
    cautious = CONFIGS[config]["cautious"]
    params, momenta = single_process(path, WORLD, STEPS, cautious=cautious)
    for i, (actual, want) in enumerate(zip(results[0]["params"], params)):
        if cautious:
            assert (actual - want).abs().max() <= 1e-14, f"param {i}: {mismatch(actual, want)}"
        else:
            assert torch.equal(actual, want), f"param {i}: {mismatch(actual, want)}"
    for actual, want in zip(results[0]["momentum"], momenta):
        torch.testing.assert_close(actual, want, rtol=1e-12, atol=1e-15)
