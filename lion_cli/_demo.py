"""``lion demo``: trains the recipe of :mod:`lion_cli.recipe` with Lion and AdamW on each installed backend.

Each backend's recipe lives in :mod:`lion_cli.demos` and is imported when the command reaches that
backend, so ``lion demo --backend torch`` works without Keras or JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._common import (
    CommandError,
    figure,
    install_hint,
    machine,
    markdown_table,
    missing,
    prepare_out,
    significant,
    stamp,
)
from .recipe import DEMO_OPTIMIZERS, History, demo_settings


class Backend(NamedTuple):
    """A demo backend: the modules it needs, its recipe module, and the extra that installs it."""

    name: str
    label: str
    requires: tuple[str, ...]
    module: str
    extra: str


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", "PyTorch", ("torch",), "lion_cli.demos.torch", "torch"),
    "keras": Backend("keras", "Keras 3", ("keras",), "lion_cli.demos.keras", "keras"),
    "jax": Backend("jax", "JAX/Optax", ("jax", "optax"), "lion_cli.demos.jax", "jax"),
}
#: The function each backend's recipe module provides:
#: ``run_recipe(optimizer: str, *, epochs: int, seed: int, on_epoch=None) -> History``, which trains
#: the recipe with ``"lion"`` or ``"adamw"`` and calls ``on_epoch(epoch, mean_loss)``.
RECIPE = "run_recipe"
#: Keras backends the demo picks from, in this order, when ``KERAS_BACKEND`` is not set.
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
#: What the demo itself needs besides a backend: the ``demo`` extra.
DEMO_REQUIRES = ("sklearn", "matplotlib", "tqdm")
OUR_PACKAGES = ("lion_core", "lion_torch", "lion_keras", "lion_optax", "lion_cli")


def _choose_keras_backend() -> None:
    """Sets ``KERAS_BACKEND`` to the first installed of jax, torch, tensorflow, before Keras is imported.

    Keras reads the variable once, at import; a user's own setting (or an already imported Keras) wins.
    """
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):
        return
    for name in KERAS_BACKENDS:
        if not missing([name]):
            os.environ["KERAS_BACKEND"] = name
            return
    raise CommandError(
        "Keras 3 needs one of its backends (jax, torch or tensorflow); none is installed: "
        + install_hint("jax")
    )


def load_backend(name: str) -> Any:
    """Imports and returns the recipe module of backend ``name``; ``CommandError`` if it is not installed."""
    backend = BACKENDS[name]
    absent = missing(backend.requires)
    if absent:
        raise CommandError(
            f"The {name} backend is not installed (cannot import {', '.join(absent)}): "
            + install_hint(backend.extra)
        )
    if name == "keras":
        _choose_keras_backend()
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if error.name == backend.module or top in OUR_PACKAGES:
            raise CommandError(
                f"This lionkit installation has no {backend.module} ({error}): reinstall lionkit"
            ) from error
        extra = "demo" if top in DEMO_REQUIRES else backend.extra
        raise CommandError(
            f"The {name} backend cannot run the demo ({error}): " + install_hint(extra)
        ) from error
    if not callable(getattr(module, RECIPE, None)):
        raise CommandError(
            f"{backend.module} has no {RECIPE}(optimizer, *, epochs, seed, on_epoch) function: "
            "this lionkit build is incomplete"
        )
    return module


def backend_label(name: str) -> str:
    """Returns the backend's name for tables, e.g. ``keras (jax)`` for Keras on its JAX backend."""
    if name == "keras":
        keras = sys.modules.get("keras")
        chosen = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "?")
        return f"keras ({chosen})"
    return name


class DemoResult(NamedTuple):
    """One row of the demo's table."""

    backend: str
    optimizer: str
    settings: dict[str, Any]
    history: History


def run_demo(backends: Sequence[str], *, epochs: int, seed: int, progress: bool = True) -> list[DemoResult]:
    """Trains Lion and AdamW on each backend in ``backends`` (already checked importable)."""
    results = []
    for name in backends:
        module = load_backend(name)
        with _one_torch_thread(name):
            results += _run_backend(name, module, epochs=epochs, seed=seed, progress=progress)
    return results


@contextlib.contextmanager
def _one_torch_thread(name: str) -> Iterator[None]:
    """Runs the PyTorch demo (and Keras on PyTorch) on one intra-op thread, then restores the setting.

    The demo's matrices (32 x 128) are too small to gain from threads, and with two threads on a
    busy two-core machine the OpenMP barriers made a run 30x slower (32 s instead of 1 s, measured).
    """
    if name != "torch" and backend_label(name) != "keras (torch)":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_backend(name: str, module: Any, *, epochs: int, seed: int, progress: bool) -> list[DemoResult]:
    from tqdm.auto import tqdm

    results = []
    # One untimed epoch first: the backend's one-time start-up (XLA's client and thread pools, Keras'
    # tracing machinery) would otherwise be charged to whichever optimizer runs first (2-5 s measured).
    if progress:
        print(f"{backend_label(name)}: warming up (one untimed epoch)", file=sys.stderr, flush=True)
    getattr(module, RECIPE)(DEMO_OPTIMIZERS[-1], epochs=1, seed=seed)
    for optimizer in DEMO_OPTIMIZERS:
        label = backend_label(name)
        with tqdm(total=epochs, desc=f"{label} {optimizer}", unit="epoch", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:

            def on_epoch(epoch: int, loss: float, bar: Any = bar) -> None:
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)

            history = getattr(module, RECIPE)(optimizer, epochs=epochs, seed=seed, on_epoch=on_epoch)
        results.append(DemoResult(label, optimizer, demo_settings(optimizer), history))
    return results


def demo_table(results: Sequence[DemoResult]) -> str:
    """The demo's markdown table: backend, optimizer, hyperparameters, final loss, accuracy, seconds."""
    rows = [
        (
            r.backend,
            r.optimizer,
            f"{r.settings['lr']:.3g}",
            f"{r.settings['weight_decay']:.3g}",
            f"{r.history.losses[-1]:.4f}",
            f"{100 * r.history.accuracy:.1f}%",
            significant(r.history.seconds),
        )
        for r in results
    ]
    return markdown_table(
        ("backend", "optimizer", "lr", "weight decay", "final train loss", "test accuracy", "seconds"), rows
    )


def plot_demo(results: Sequence[DemoResult], path: Path) -> None:
    """Writes the loss curves (colour: optimizer, line style: backend) and a bar chart of seconds per run.

    Every backend starts from the same weights and sees the same batches, so the curves of one
    optimizer lie on top of each other: differing line styles keep each backend visible.
    """
    from matplotlib.ticker import MaxNLocator

    plot = figure(11, 4.5)
    curves, bars = plot.subplots(1, 2, width_ratios=(3, 2))
    colours = {"lion": "C1", "adamw": "C0"}
    styles: dict[str, tuple[str, str]] = {}
    for r in results:
        slot = len(styles) % 4
        style, marker = styles.setdefault(r.backend, (("-", "--", ":", "-.")[slot], "osd^"[slot]))
        epochs = np.arange(1, len(r.history.losses) + 1)
        curves.plot(epochs, r.history.losses, color=colours.get(r.optimizer, "C2"), linestyle=style,
                    marker=marker, markevery=max(1, len(epochs) // 10), markersize=4,
                    label=f"{r.backend} {r.optimizer}")
    curves.set_yscale("log")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("mean training loss (cross-entropy)")
    curves.set_title("Loss: Lion vs AdamW, same weights and batches", fontsize="medium")
    curves.grid(True, which="both", alpha=0.3)
    curves.legend(fontsize="small")

    labels = [f"{r.backend} {r.optimizer}" for r in results]
    positions = np.arange(len(results))
    bars.barh(positions, [r.history.seconds for r in results],
              color=[colours.get(r.optimizer, "C2") for r in results])
    bars.set_yticks(positions, labels, fontsize="small")
    bars.invert_yaxis()
    for y, r in zip(positions, results):
        bars.annotate(f"{significant(r.history.seconds)} s, {100 * r.history.accuracy:.1f}% test acc.",
                      (r.history.seconds, y), xytext=(3, 0), textcoords="offset points", va="center",
                      fontsize="x-small")
    bars.set_xlim(0, 1.6 * max(r.history.seconds for r in results))
    bars.set_xlabel("seconds (training, including compilation)")
    bars.set_title("Time and test accuracy", fontsize="medium")
    bars.grid(True, axis="x", alpha=0.3)
    plot.suptitle("lion demo: an MLP on scikit-learn digits")
    plot.savefig(path)


def run(args: argparse.Namespace) -> int:
    """Runs ``lion demo`` with parsed arguments; returns the exit status."""
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    if args.backend == "all":
        available = [n for n in names if not missing(BACKENDS[n].requires)]
        for n in names:
            if n not in available:
                print(f"lion demo: skipping {n}: not installed; {install_hint(BACKENDS[n].extra)}",
                      file=sys.stderr)
        if not available:
            raise CommandError("No backend is installed: " + install_hint("torch") + ", or [keras] or [jax]")
        names = available
    elif missing(BACKENDS[args.backend].requires):
        load_backend(args.backend)  # raises the not-installed error
    demo_missing = missing(DEMO_REQUIRES)
    if demo_missing:
        raise CommandError(f"lion demo needs {', '.join(demo_missing)}: " + install_hint("demo"))
    out = prepare_out(args.out)
    where, when, start = machine(), stamp(), time.perf_counter()

    results = run_demo(names, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    table = demo_table(results)
    print(table)
    png = out / "lion-demo.png"
    plot_demo(results, png)
    command = "lion demo " + " ".join(args.argv)
    (out / "lion-demo.md").write_text(
        f"`{command.strip()}` on {when} ({where}); {args.epochs} epochs, seed {args.seed}; "
        f"{significant(time.perf_counter() - start)} s in all.\n\n"
        f"{table}\n"
    )
    print(f"\nwrote {png} and {out / 'lion-demo.md'}")
    return 0
