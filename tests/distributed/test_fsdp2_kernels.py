"""FSDP2 (``fully_shard``) with ``lion_torch.Lion``'s default path, on 1 and 2 gloo ranks.

The parameters are DTensors sharded on dim 0; the default path runs the fused CPU kernel on each rank's
local shard (``to_local()``), and ``cautious=True`` all-reduces the per-tensor (kept, total) counts once
per step. The oracle is the same model, unsharded, trained in one process with the same optimizer on
the same data: every rank sees the same batch, so FSDP2's averaged gradient equals the unsharded one
exactly, and the elementwise update must then agree bit for bit in float64 and in float32 (stated
budget: 0 mismatching elements; a different path would flip signs near 0 in float32). The foreach and
single-tensor paths, which update DTensors through DTensor ops, are checked the same way in float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import run_ranks
from tests.support import assert_exact

STEPS = 4
HYPER = {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.1}


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    # Odd sizes: dim 0 of 7 rows and of 5 rows shards unevenly over 2 ranks (4 + 3, 3 + 2).
    return torch.nn.Sequential(
        torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).to(dtype)


def _batches(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=generator, dtype=dtype), torch.randn(8, 3, generator=generator,
             dtype=dtype)) for _ in range(STEPS)]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> None:
    for x, y in _batches(dtype):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


#: The default path in both dtypes, with and without ``cautious``; the foreach and single-tensor paths,
#: which handle DTensors through DTensor ops, in float64 (against the unsharded model on the same path).
CONFIGS = [(dtype, cautious, "default") for dtype in (torch.float64, torch.float32)
           for cautious in (False, True)]
CONFIGS += [(torch.float64, cautious, path) for path in ("foreach", "single") for cautious in (False, True)]
FLAGS = {"default": {}, "foreach": {"foreach": True}, "single": {"foreach": False}}


def _fsdp_rank(rank: int, world_size: int) -> dict:
    """Every configuration in one process per rank: starting ranks costs more than training."""
    return {config: _fsdp_config(*config) for config in CONFIGS}


def _fsdp_config(dtype: torch.dtype, cautious: bool, path: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import lion_kernels.cpu_lion as cpu_lion
    import lion_torch._functional as functional
    from lion_torch import Lion

    calls = []
    real_lion_ = cpu_lion.lion_

    def counting_lion_(params, grads, momenta, **kwargs):
        calls.append([type(t).__name__ for t in (*params, *grads, *momenta)])
        return real_lion_(params, grads, momenta, **kwargs)

    cpu_lion.lion_ = counting_lion_
    reductions = []  # the shape of the counts each cautious all-reduce summed
    real_count_reduction = functional._count_reduction

    def counting_reduction(mesh, dims):
        reduce = real_count_reduction(mesh, dims)

        def counted(counts):
            reductions.append(tuple(counts.shape))
            return reduce(counts)

        return counted

    functional._count_reduction = counting_reduction
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = _model(dtype)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = Lion(model.parameters(), cautious=cautious, **FLAGS[path], **HYPER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, optimizer, dtype)
    params = [_full(p) for p in model.parameters()]
    momenta = [_full(optimizer.state[p]["exp_avg"]) for p in model.parameters()]
    kinds = {type(optimizer.state[p]["exp_avg"]).__name__ for p in model.parameters()}
    cpu_lion.lion_ = real_lion_
    functional._count_reduction = real_count_reduction
    dist.barrier()
    return {"params": params, "momenta": momenta, "kernel_calls": calls, "momentum_types": kinds,
            "reductions": reductions,
            "warnings": [str(w.message) for w in caught]}


def _unsharded(dtype: torch.dtype, cautious: bool, path: str) -> dict:
    from lion_torch import Lion

    model = _model(dtype)
    optimizer = Lion(model.parameters(), cautious=cautious, **FLAGS[path], **HYPER)
    _train(model, optimizer, dtype)
    return {"params": [_full(p) for p in model.parameters()],
            "momenta": [_full(optimizer.state[p]["exp_avg"]) for p in model.parameters()]}


def _kernel_runs() -> str | None:
    try:
        from lion_kernels import cpu_lion
    except ImportError as error:
        return f"lion_kernels.cpu_lion cannot be imported: {error}"
    return cpu_lion.unavailable_reason()


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_fully_shard_default_path_equals_the_unsharded_model(world_size):
    reason = _kernel_runs()
    if reason is not None:
        pytest.skip(f"the CPU kernel cannot run here, so the default path is foreach: {reason}")
    results = run_ranks(_fsdp_rank, world_size)
    for dtype, cautious, path in CONFIGS:
        expected = _unsharded(dtype, cautious, path)
        for rank, by_config in enumerate(results):
            result = by_config[(dtype, cautious, path)]
            where = f"{path} path, {dtype}, cautious={cautious}, rank {rank} of {world_size}"
            # The kernel ran once per step (the default path) on local shards only, never a DTensor.
            calls = result["kernel_calls"]
            assert len(calls) == (STEPS if path == "default" else 0), f"{where}: {calls}"
            assert {kind for call in calls for kind in call} <= {"Tensor"}, where
            assert result["momentum_types"] == {"DTensor"}, where
            # cautious: one all-reduce per step of every tensor's (kept, total) counts, batched.
            sharded = 2 * sum(isinstance(layer, torch.nn.Linear) for layer in _model(dtype))
            wanted = [(sharded, 2)] * STEPS if cautious and path == "default" else []
            assert result["reductions"] == wanted, f"{where}: {result['reductions']}"
            assert result["warnings"] == [], f"{where} warned: {result['warnings']}"
            for i, (actual, wanted) in enumerate(zip(result["params"], expected["params"])):
                assert_exact(actual, wanted, what=f"{where}: param {i}")
            for i, (actual, wanted) in enumerate(zip(result["momenta"], expected["momenta"])):
                assert_exact(actual, wanted, what=f"{where}: momentum {i}")
