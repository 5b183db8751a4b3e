"""``lion_torch.DistributedLion`` on 1-4 gloo ranks against the float64 reference of its vote.

The parameters start different on every rank (the constructor must broadcast rank 0's), each rank
draws its own gradients, and after every step each rank hashes its parameters: the hashes must agree
across ranks, and the final parameters and every rank's momenta must equal the float64 reference
exactly. 3 ranks never tie; 4 ranks do (checked), and a tie must leave a coordinate in place.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.distributed as dist

import lion_torch
from lion_core.reference import reference_distributed_lion, reference_vote
from lion_torch import DistributedLion
from tests.distributed.launch import run_ranks

SHAPES = [(7, 5), (13,), (1,), (0,), (300,)]
HYPER = {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.5}
STEPS = 5
#: The all-gather DistributedLion calls: ``all_gather_single`` where torch has it (2.13+).
GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"


def _initial(rank: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)  # different on every rank: the broadcast must fix it
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]


def _grad(rank: int, step: int, index: int) -> torch.Tensor | None:
    """Rank ``rank``'s gradient of parameter ``index`` at ``step``; None for the skipped one."""
    if index == 1 and step == 2:
        return None  # a parameter without a gradient on every rank this step
    if index == 2 and step == 0:
        return torch.zeros(SHAPES[index], dtype=torch.float64)  # c == 0 on every rank: the zero rule
    gen = torch.Generator().manual_seed(10_000 * step + 100 * rank + index)
    return torch.randn(SHAPES[index], generator=gen, dtype=torch.float64)


def _digest(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _train(rank: int, world_size: int, vote: str, dtype: torch.dtype, steps: int) -> dict[str, object]:
    params = [torch.nn.Parameter(p) for p in _initial(rank, dtype)]
    opt = DistributedLion(params, **HYPER, vote=vote)
    start = [p.detach().clone() for p in params]
    hashes = []
    for step in range(steps):
        for i, p in enumerate(params):
            g = _grad(rank, step, i)
            p.grad = None if g is None else g.to(dtype)
        opt.step()
        hashes.append(_digest(params))
    return {
        "start": start,
        "params": [p.detach().clone() for p in params],
        "momentum": [opt.state[p]["exp_avg"].clone() for p in params],
        "hashes": hashes,
    }


def _reference(world_size: int, vote: str, start: list[torch.Tensor], steps: int):
    grads = [
        [
            [None if (g := _grad(r, t, i)) is None else g.numpy() for i in range(len(SHAPES))]
            for r in range(world_size)
        ]
        for t in range(steps)
    ]
    return reference_distributed_lion(
        [p.numpy() for p in start],
        grads,
        lr=HYPER["lr"],
        beta1=HYPER["betas"][0],
        beta2=HYPER["betas"][1],
        weight_decay=HYPER["weight_decay"],
        vote=vote,
    )


def _assert_equal(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    actual_np = actual.numpy()
    bad = np.argwhere(~((actual_np == expected) | (np.isnan(actual_np) & np.isnan(expected))))
    assert bad.size == 0, (
        f"{what}: first mismatches at {bad[:5].tolist()}: "
        f"{actual_np[tuple(bad[0])]} != {expected[tuple(bad[0])]}"
    )


@pytest.mark.parametrize(("world_size", "vote"), [(3, "majority"), (4, "majority"), (3, "average")])
def test_matches_the_reference_and_ranks_stay_identical(world_size: int, vote: str) -> None:
    results = run_ranks(_train, world_size, args=(vote, torch.float64, STEPS))
    for r in range(world_size):
        assert results[r]["hashes"] == results[0]["hashes"], f"rank {r} diverged from rank 0"
        for a, b in zip(results[r]["start"], results[0]["start"]):
            assert torch.equal(a, b), "the parameters were not broadcast from rank 0"
    assert not torch.equal(results[0]["start"][0], _initial(1, torch.float64)[0])
    expected = _reference(world_size, vote, results[0]["start"], STEPS)
    for i, p in enumerate(results[0]["params"]):
        _assert_equal(p, expected.params[i], f"param {i}")
    for r in range(world_size):
        for i, m in enumerate(results[r]["momentum"]):
            _assert_equal(m, expected.momentum[r][i], f"rank {r} momentum {i}")


def test_four_ranks_tie_and_a_tie_does_not_move():
    # The 4-rank case above only tests ties if some occur: at step 0 (zero momentum) the local signs
    # are the gradients' signs.
    signs = [np.sign(_grad(r, 0, 4).numpy()) for r in range(4)]
    vote = reference_vote(signs)
    assert (vote == 0).sum() > 10
    assert set(np.unique(vote)) == {-1.0, 0.0, 1.0}
    # The zero rule: c == 0 on every rank at step 0; an even world cancels it, an odd one does not.
    assert reference_vote([np.ones(1), -np.ones(1), np.ones(1), -np.ones(1)])[0] == 0.0


def _train_low_precision(rank: int, world_size: int) -> list[str]:
    return _train(rank, world_size, "majority", torch.bfloat16, 3)["hashes"]


def test_bfloat16_ranks_stay_bit_identical():
    hashes = run_ranks(_train_low_precision, 2)
    assert hashes[0] == hashes[1]


def _non_finite(rank: int, world_size: int) -> list[bool]:
    params = [
        torch.nn.Parameter(torch.ones(5, dtype=torch.float64)),
        torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
    ]
    opt = DistributedLion(params, lr=0.1)
    params[0].grad = torch.ones(5, dtype=torch.float64)
    params[1].grad = torch.ones(3, dtype=torch.float64)
    if rank == 1:
        params[1].grad[2] = float("nan")
    opt.step()
    return [bool(torch.isnan(p).all()) for p in params]


def test_a_non_finite_direction_on_one_rank_makes_the_step_nan_everywhere():
    assert run_ranks(_non_finite, 2) == [[True, True], [True, True]]


def _save(rank: int, world_size: int, steps: int) -> dict[str, object]:
    params = [torch.nn.Parameter(p) for p in _initial(rank, torch.float64)]
    opt = DistributedLion(params, **HYPER)
    for step in range(steps):
        for i, p in enumerate(params):
            g = _grad(rank, step, i)
            p.grad = None if g is None else g
        opt.step()
    return {"params": [p.detach().clone() for p in params], "state": opt.state_dict()}


def _resume(rank: int, world_size: int, saved: list[dict[str, object]], first: int, steps: int):
    params = [torch.nn.Parameter(p.clone()) for p in saved[rank]["params"]]
    opt = DistributedLion(params, **HYPER)
    opt.load_state_dict(saved[rank]["state"])
    for step in range(first, steps):
        for i, p in enumerate(params):
            g = _grad(rank, step, i)
            p.grad = None if g is None else g
        opt.step()
    return [p.detach().clone() for p in params]


def _load_elsewhere(rank: int, world_size: int, saved: dict[str, object]) -> str:
    opt = DistributedLion([torch.nn.Parameter(p.clone()) for p in saved["params"]], **HYPER)
    try:
        opt.load_state_dict(saved["state"])
    except ValueError as error:
        return str(error)
    return "loaded"


@pytest.mark.slow  # four launches
def test_state_dict_resumes_each_rank_and_refuses_another_world_size():
    uninterrupted = run_ranks(_save, 2, args=(STEPS,))
    halfway = run_ranks(_save, 2, args=(2,))
    assert halfway[0]["state"]["param_groups"][0]["world_size"] == 2
    resumed = run_ranks(_resume, 2, args=(halfway, 2, STEPS))
    for r in range(2):
        for a, b in zip(resumed[r], uninterrupted[r]["params"]):
            assert torch.equal(a, b)
    (message,) = run_ranks(_load_elsewhere, 1, args=(halfway[0],))
    assert message.startswith("Invalid `state_dict['param_groups'][0]['world_size']`: expected 1, ")
    assert message.endswith("Received: state_dict['param_groups'][0]['world_size']=2")


def _collectives(rank: int, world_size: int) -> list[tuple[str, int, int]]:
    calls = []
    for name in ("all_to_all_single", GATHER):
        original = getattr(dist, name)

        def record(output, input, *args, _name=name, _original=original, **kwargs):
            calls.append(
                (_name, input.numel() * input.element_size(), output.numel() * output.element_size())
            )
            return _original(output, input, *args, **kwargs)

        setattr(dist, name, record)
    params = [torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(24))]
    opt = DistributedLion(params, lr=0.1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(rank))
    opt.step()
    return calls


def test_the_collectives_move_one_bit_then_two_per_coordinate():
    # 1024 coordinates, 4 ranks: 256 per shard. Leg 1 sends 4 shards of 32 bytes plus a flag byte;
    # leg 2 gathers a 2-bit voted shard (64 bytes) plus a flag byte from each rank.
    calls = run_ranks(_collectives, 4)
    assert calls[0] == [("all_to_all_single", 4 * 33, 4 * 33), (GATHER, 65, 4 * 65)]


def test_validation():
    with pytest.raises(RuntimeError, match="needs an initialized process group"):
        DistributedLion([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(
        ValueError, match=r"Invalid `vote`: expected one of \('majority', 'average'\). Received: vote='mean'"
    ):
        DistributedLion([torch.nn.Parameter(torch.zeros(2))], vote="mean")
    assert lion_torch.DistributedLion is DistributedLion


def _subgroups(rank: int, world_size: int) -> dict[str, object]:
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
    mine = groups[rank // 2]
    params = [torch.nn.Parameter(p) for p in _initial(rank, torch.float64)]
    opt = DistributedLion(params, **HYPER, process_group=mine)
    start = [p.detach().clone() for p in params]
    for step in range(2):
        for i, p in enumerate(params):
            g = _grad(rank, step, i)
            p.grad = None if g is None else g
        opt.step()
    return {"start": start, "params": [p.detach().clone() for p in params]}


def test_a_process_group_votes_alone_and_broadcasts_from_its_first_rank():
    results = run_ranks(_subgroups, 4)
    for first, second in ((0, 1), (2, 3)):
        expected_start = _initial(first, torch.float64)  # the group's first global rank
        for r in (first, second):
            assert all(torch.equal(a, b) for a, b in zip(results[r]["start"], expected_start))
        assert all(torch.equal(a, b) for a, b in zip(results[first]["params"], results[second]["params"]))
    assert not torch.equal(results[0]["params"][0], results[2]["params"][0])
    # The second group votes over global ranks 2 and 3's gradients, as its ranks 0 and 1.
    grads = [
        [[None if (g := _grad(r, t, i)) is None else g.numpy() for i in range(len(SHAPES))] for r in (2, 3)]
        for t in range(2)
    ]
    second = reference_distributed_lion(
        [p.numpy() for p in _initial(2, torch.float64)],
        grads,
        lr=HYPER["lr"],
        beta1=HYPER["betas"][0],
        beta2=HYPER["betas"][1],
        weight_decay=HYPER["weight_decay"],
    )
    for i, p in enumerate(results[2]["params"]):
        _assert_equal(p, second.params[i], f"group 2 param {i}")


def test_the_quality_benchmark_builds_the_demo_model():
    # benchmarks/bench_distributed.py compares DistributedLion with Lion + DDP on the demo's MLP,
    # loaded with the demo's initial weights; its recipe imports once pointed at a moved module.
    from lion_cli.benchmarks.bench_distributed import _model
    from lion_cli.recipe import demo_init

    layers = [m for m in _model() if isinstance(m, torch.nn.Linear)]
    assert [tuple(layer.weight.shape) for layer in layers] == [kernel.T.shape for kernel, _ in demo_init(0)]
