"""The test launcher itself: ranks meet, a collective runs, results and failures come back."""

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import run_ranks


def _sum_of_ranks(rank: int, world_size: int, scale: float) -> float:
    value = torch.tensor([float(rank) * scale], dtype=torch.float64)
    dist.all_reduce(value)
    return value.item()


def _fails_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one fails on purpose")
    return rank


def test_ranks_run_a_collective_and_return_results():
    assert run_ranks(_sum_of_ranks, 3, args=(2.0,)) == [6.0, 6.0, 6.0]


def test_a_failing_rank_is_reported_with_its_traceback():
    with pytest.raises(RuntimeError, match="rank 1:[\\s\\S]*rank one fails on purpose"):
        run_ranks(_fails_on_rank_one, 2)
