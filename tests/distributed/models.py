"""A small model, its data and the optimizer paths shared by the DDP, FSDP2 and checkpoint tests."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

#: The lion_torch.Lion implementation flags of each path: foreach, single-tensor, and the default
#: (the fused kernel where it can run).
PATHS: dict[str, dict[str, Any]] = {
    "foreach": {"foreach": True},
    "single": {"foreach": False, "fused": False},
    "default": {},
}
HYPER: dict[str, Any] = {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.1}
IN, HIDDEN, OUT = 6, 16, 3
BATCH_PER_RANK = 4


def make_model(dtype: torch.dtype = torch.float64) -> torch.nn.Sequential:
    """The same weights in every process: a fixed seed, drawn in float64 and rounded once."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, OUT),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model.to(dtype)


def global_batch(
    step: int, world_size: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of ``step``: ``world_size * BATCH_PER_RANK`` rows; rank r takes rows r*B:(r+1)*B."""
    gen = torch.Generator().manual_seed(1_000 + step)
    x = torch.randn(world_size * BATCH_PER_RANK, IN, generator=gen, dtype=torch.float64)
    y = torch.randn(world_size * BATCH_PER_RANK, OUT, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def rank_batch(step: int, rank: int, world_size: int, dtype: torch.dtype = torch.float64):
    x, y = global_batch(step, world_size, dtype)
    rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    return x[rows], y[rows]


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean()


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def single_process(
    path: str, world_size: int, steps: int, dtype: torch.dtype = torch.float64, **options: Any
):
    """One process training on the ranks' concatenated batches: the parameters and momenta after ``steps``."""
    from lion_torch import Lion

    model = make_model(dtype)
    opt = Lion(model.parameters(), **HYPER, **PATHS[path], **options)
    for step in range(steps):
        loss_fn(model, *global_batch(step, world_size, dtype)).backward()
        opt.step()
        opt.zero_grad()
    params = [p.detach().clone() for p in model.parameters()]
    return params, [opt.state[p]["exp_avg"].clone() for p in model.parameters()]


def mismatch(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """The first mismatching indices, for a failure message."""
    differ = actual != expected
    bad = differ.nonzero()[:5].tolist()
    worst = float((actual - expected).abs().max()) if actual.numel() else 0.0
    return f"{int(differ.sum())} of {actual.numel()} differ (max |diff| {worst:.3g}), first at {bad}"
