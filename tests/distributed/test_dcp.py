"""``torch.distributed.checkpoint`` with ``get_/set_optimizer_state_dict`` for FSDP2 + ``lion_torch.Lion``.

One 2-rank run trains 3 steps, saves a distributed checkpoint, exports the full (unsharded) state
dicts, and trains on to step 6 (saving reads the state, it does not change it). Resuming from the
checkpoint on 2 ranks must reproduce steps 4-6 bit for bit. Resuming on 4 ranks reshards the
momenta; the global batch is the same, split 4 ways, so the averaged gradient differs from the
2-rank one by rounding only: the parameters (which read only the sign of ``c``) are bit-identical
in float64 and the momenta agree to 1e-12. The full export loads into a single-process
``lion_torch.Lion``, which continues to the same parameters (bit-identical) and momenta (1e-12).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lion_torch import Lion
from tests.distributed.launch import run_ranks
from tests.distributed.models import HYPER, global_batch, loss_fn, make_model, mismatch
from tests.distributed.test_fsdp2 import shard

SAVED_AT, STEPS = 3, 6
SAVE_WORLD = 2
PATH = {"foreach": True}


def _batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s part of the global batch of a 2-rank run, whatever the world size."""
    x, y = global_batch(step, SAVE_WORLD)
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def _train(model, opt, rank: int, world_size: int, steps: range) -> None:
    for step in steps:
        loss_fn(model, *_batch(step, rank, world_size)).backward()
        opt.step()
        opt.zero_grad()


def _full(model, opt) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = [p.full_tensor().detach().clone() for p in model.parameters()]
    return params, [opt.state[p]["exp_avg"].full_tensor().clone() for p in model.parameters()]


def _save_and_continue(rank: int, world_size: int, folder: str) -> dict[str, object]:
    model = shard(make_model(), world_size, mixed=False)
    opt = Lion(model.parameters(), **HYPER, **PATH)
    _train(model, opt, rank, world_size, range(SAVED_AT))
    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=folder,
    )
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    export = {
        "model": get_model_state_dict(model, options=options),
        "optim": get_optimizer_state_dict(model, opt, options=options),
    }
    _train(model, opt, rank, world_size, range(SAVED_AT, STEPS))
    return {"final": _full(model, opt), "export": export}


def _resume(rank: int, world_size: int, folder: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = shard(make_model(), world_size, mixed=False)
    with torch.no_grad():  # make sure the weights come from the checkpoint
        for p in model.parameters():
            p.zero_()
    opt = Lion(model.parameters(), **HYPER, **PATH)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    _train(model, opt, rank, world_size, range(SAVED_AT, STEPS))
    return _full(model, opt)


def _assert_same(actual, expected) -> None:
    params, momenta = actual
    for i, (a, b) in enumerate(zip(params, expected[0])):
        assert torch.equal(a, b), f"param {i}: {mismatch(a, b)}"
    for a, b in zip(momenta, expected[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.slow  # three launches, up to 4 ranks
def test_dcp_resumes_on_two_and_four_ranks_and_exports_to_one_process(tmp_path: Path) -> None:
    folder = str(tmp_path / "checkpoint")
    first = run_ranks(_save_and_continue, SAVE_WORLD, args=(folder,))
    uninterrupted = first[0]["final"]

    same = run_ranks(_resume, 2, args=(folder,))
    for rank_result in same:
        for a, b in zip(rank_result[0] + rank_result[1], uninterrupted[0] + uninterrupted[1]):
            assert torch.equal(a, b), mismatch(a, b)

    resharded = run_ranks(_resume, 4, args=(folder,))
    for rank_result in resharded:
        _assert_same(rank_result, uninterrupted)

    # The full export: FQN-keyed, loaded into a plain model and a single-process Lion.
    export = first[0]["export"]
    model = make_model()
    model.load_state_dict(export["model"])
    opt = Lion(model.parameters(), **HYPER, **PATH)
    names = [name for name, _ in model.named_parameters()]
    optim = export["optim"]
    assert sorted(optim["state"]) == sorted(names)
    opt.load_state_dict(
        {
            "state": {names.index(k): v for k, v in optim["state"].items()},
            "param_groups": [
                {**g, "params": [names.index(k) for k in g["params"]]} for g in optim["param_groups"]
            ],
        }
    )
    for step in range(SAVED_AT, STEPS):
        loss_fn(model, *global_batch(step, SAVE_WORLD)).backward()
        opt.step()
        opt.zero_grad()
    _assert_same(
        ([p.detach() for p in model.parameters()], [opt.state[p]["exp_avg"] for p in model.parameters()]),
        uninterrupted,
    )
