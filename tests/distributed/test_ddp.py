"""``DistributedDataParallel`` + ``lion_torch.Lion`` on 2 gloo ranks, on every implementation path.

After every step the ranks hash their parameters: the hashes must agree. After the last step the
parameters must equal one process training on the ranks' concatenated batches. In float64 they are
bit-identical: DDP's averaged gradient differs from the one-process gradient by rounding only, and
Lion's parameter update reads nothing of the gradient but the sign of ``c``, which that rounding
cannot flip unless ``c`` is within ~1e-16 of 0 (the momenta, which do read the gradient, agree to
1e-12). In float32 the rounding is ~1e-7 relative: a sign may flip where ``|c|`` is that small, which
moves that element by ``2 * lr``; the budget is at most 1% of elements flipped, none by more than
``2 * lr * steps``.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from lion_torch import Lion
from tests.distributed.launch import run_ranks
from tests.distributed.models import (
    HYPER,
    PATHS,
    digest,
    loss_fn,
    make_model,
    mismatch,
    rank_batch,
    single_process,
)

STEPS = 6
WORLD = 2


def _train(rank: int, world_size: int, path: str, dtype: torch.dtype) -> dict[str, object]:
    model = DistributedDataParallel(make_model(dtype))
    opt = Lion(model.parameters(), **HYPER, **PATHS[path])
    hashes = []
    for step in range(STEPS):
        loss_fn(model, *rank_batch(step, rank, world_size, dtype)).backward()
        opt.step()
        opt.zero_grad()
        hashes.append(digest(list(model.parameters())))
    return {
        "hashes": hashes,
        "params": [p.detach().clone() for p in model.parameters()],
        "momentum": [opt.state[p]["exp_avg"].clone() for p in model.parameters()],
    }


@pytest.mark.parametrize("path", list(PATHS))
def test_ddp_float64_is_one_process_on_the_concatenated_batch(path: str) -> None:
    results = run_ranks(_train, WORLD, args=(path, torch.float64))
    assert results[1]["hashes"] == results[0]["hashes"]
    params, momenta = single_process(path, WORLD, STEPS)
    for i, (actual, expected) in enumerate(zip(results[0]["params"], params)):
        assert torch.equal(actual, expected), f"param {i}: {mismatch(actual, expected)}"
    for actual, expected in zip(results[0]["momentum"], momenta):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("path", list(PATHS))
def test_ddp_float32_within_the_budget(path: str) -> None:
    results = run_ranks(_train, WORLD, args=(path, torch.float32))
    assert results[1]["hashes"] == results[0]["hashes"]
    params, _ = single_process(path, WORLD, STEPS, torch.float32)
    lr = HYPER["lr"]
    for actual, expected in zip(results[0]["params"], params):
        differ = actual != expected
        assert differ.float().mean() <= 0.01, mismatch(actual, expected)
        # a flipped sign moves an element by 2 lr; float32 rounding of the decay adds ~1 ulp
        assert (actual - expected).abs().max() <= 2 * lr * STEPS + 1e-6, mismatch(actual, expected)
