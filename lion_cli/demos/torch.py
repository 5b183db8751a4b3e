"""``lion demo`` on PyTorch: an MLP on scikit-learn's digits with ``lion_torch.Lion`` or ``AdamW``.

The recipe (data split, initial weights, batch order, hyperparameters) is :mod:`lion_cli.recipe`'s, shared
with the Keras and JAX demos. The data ships with scikit-learn (no download), the seeds are fixed,
and the default run takes a few seconds on two CPU cores.

Run it alone with ``python -m lion_cli.demos.torch`` (Lion; ``--optimizer adamw`` for the baseline,
``--impl single|foreach|fused`` for an implementation path), or through ``lion demo --backend torch``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lion_cli._common import significant
from lion_cli.recipe import DEMO_EPOCHS, History, demo_batches, demo_data, demo_init, demo_settings
from lion_torch import Lion

#: The constructor flags of each implementation path; "auto" lets ``Lion`` choose.
IMPLEMENTATIONS: dict[str, dict[str, bool]] = {
    "auto": {},
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def _model(seed: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for kernel, bias in demo_init(seed):
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))  # torch stores (out, in)
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _optimizer(name: str, params: Any, impl: str) -> torch.optim.Optimizer:
    settings = demo_settings(name)
    if name == "lion":
        return Lion(params, lr=settings["lr"], betas=settings["betas"], weight_decay=settings["weight_decay"],
                    **IMPLEMENTATIONS[impl])
    return torch.optim.AdamW(params, lr=settings["lr"], betas=settings["betas"], eps=settings["eps"],
                             weight_decay=settings["weight_decay"])


def run_recipe(
    optimizer: str,
    *,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    impl: str = "auto",
) -> History:
    """Trains the demo MLP with ``"lion"`` or ``"adamw"``; returns the per-epoch losses, accuracy, seconds.

    Args:
      optimizer: ``"lion"`` (``lion_torch.Lion``) or ``"adamw"`` (``torch.optim.AdamW``).
      epochs: passes over the training split (default ``lion_cli.recipe.DEMO_EPOCHS``).
      seed: seeds the initial weights and the batch order (default 0).
      on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch (epochs count from 0).
      impl: Lion's implementation path, a key of ``IMPLEMENTATIONS`` (default ``"auto"``).

    Example:
      >>> from lion_cli.demos.torch import run_recipe
      >>> history = run_recipe("lion", epochs=1)
      >>> len(history.losses), 0.0 <= history.accuracy <= 1.0
      (1, True)
    """
    data = demo_data()
    model = _model(seed)
    opt = _optimizer(optimizer, model.parameters(), impl)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    start = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for batch in demo_batches(len(x_train), epoch, seed):
            index = torch.from_numpy(batch)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x_train))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.x_test)).argmax(-1).numpy()
    seconds = time.perf_counter() - start
    return History(losses, float(np.mean(predicted == data.y_test)), seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Trains once and prints the loss of each epoch and the test accuracy."""
    parser = argparse.ArgumentParser(prog="python -m lion_cli.demos.torch",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=("lion", "adamw"), default="lion")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), default="auto",
                        help="Lion's implementation path (default: auto)")
    args = parser.parse_args(argv)
    settings = demo_settings(args.optimizer)
    print(f"{args.optimizer} on scikit-learn digits: lr={settings['lr']:.3g}, "
          f"weight_decay={settings['weight_decay']:.3g}, {args.epochs} epochs", flush=True)
    def on_epoch(epoch: int, loss: float) -> None:
        print(f"epoch {epoch + 1:3d}  loss {loss:.4f}", flush=True)

    history = run_recipe(args.optimizer, epochs=args.epochs, seed=args.seed, impl=args.impl,
                         on_epoch=on_epoch)
    print(f"test accuracy {history.accuracy:.3f}  ({significant(history.seconds)} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
