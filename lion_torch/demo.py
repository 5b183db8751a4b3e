"""Trains a small MLP with ``lion_torch.Lion`` on scikit-learn's digits; prints loss and accuracy.

The data ships with scikit-learn (no download), the seed is fixed, and the default run takes a few
seconds on two CPU cores::

    python -m lion_torch.demo
    python -m lion_torch.demo --epochs 20 --lr 3e-4 --impl single
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from lion_torch import Lion

IMPLEMENTATIONS = {
    "auto": {},
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


class Epoch(NamedTuple):
    """What one epoch of training produced."""

    epoch: int
    loss: float  # mean training loss over the epoch's batches
    train_accuracy: float
    test_accuracy: float
    seconds: float


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8x8 digits, standardised with the training split's statistics; 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    return (x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    batch_size: int = 64,
    hidden: int = 128,
    seed: int = 0,
    impl: str = "auto",
    log: Callable[[Epoch], None] | None = None,
) -> list[Epoch]:
    """Trains the MLP; returns one ``Epoch`` per epoch (and passes each to ``log``)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    optimizer = Lion(model.parameters(), lr=lr, weight_decay=weight_decay, **IMPLEMENTATIONS[impl])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total, batches = 0.0, 0
        for index in torch.randperm(len(x_train), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        scheduler.step()
        record = Epoch(epoch, total / batches, _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test),
                       time.perf_counter() - start)
        history.append(record)
        if log is not None:
            log(record)
    return history


def _print(record: Epoch) -> None:
    print(
        f"epoch {record.epoch:3d}  loss {record.loss:.4f}  train acc {record.train_accuracy:.3f}  "
        f"test acc {record.test_accuracy:.3f}  ({record.seconds:.2f} s)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (default: the command line), trains, prints one line per epoch."""
    parser = argparse.ArgumentParser(prog="python -m lion_torch.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), default="auto",
                        help="implementation path of the optimizer step (default: auto)")
    args = parser.parse_args(argv)
    print(f"lion_torch.Lion on scikit-learn digits: lr={args.lr}, weight_decay={args.weight_decay}, "
          f"{args.epochs} epochs, batch {args.batch_size}, impl={args.impl}", flush=True)
    history = train(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                    hidden=args.hidden, seed=args.seed, impl=args.impl, log=_print)
    print(f"final: loss {history[-1].loss:.4f}, test accuracy {history[-1].test_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
