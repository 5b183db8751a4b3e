"""The ``lion`` command: ``lion demo`` trains a small model with Lion and AdamW, ``lion bench`` times steps.

``lion demo`` trains the same multilayer perceptron on scikit-learn's digits (the data ships inside
scikit-learn: nothing is downloaded) with Lion and with AdamW, on every installed backend (PyTorch,
Keras 3, JAX/Optax); it prints a table of final loss, test accuracy and time, and writes a PNG of the
loss curves. ``lion bench`` runs the step-time benchmarks of a source checkout's ``benchmarks/``
folder, prints their markdown tables together and plots the step times.

This module imports no framework when it is imported: each backend is imported when the command
reaches it, so ``lion demo --backend torch`` works without Keras or JAX, and ``import lion_core``
never imports this module at all.

The demo recipe (data split, initial weights, minibatch order, hyperparameters) is defined here, once,
and every backend's ``demo.run_recipe`` uses it, so the curves of different backends are comparable:
same initial weights, same batches, and Lion's hyperparameters derived from AdamW's by
:func:`lion_core.from_adamw`.

Example:
  From a shell::

      lion demo --backend torch --epochs 5 --out results
      lion bench --only torch-cpu

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._transfer import LionSettings, from_adamw

# --------------------------------------------------------------------------------------------------
# The demo recipe, shared by lion_torch.demo, lion_keras.demo and lion_optax.demo.
# --------------------------------------------------------------------------------------------------

#: Widths of the hidden layers of the demo's MLP (64 inputs, ReLU, 10 logits).
DEMO_HIDDEN: tuple[int, ...] = (128, 128)
#: Minibatch size; the last batch of an epoch is smaller.
DEMO_BATCH = 32
#: Default number of epochs of ``lion demo``.
DEMO_EPOCHS = 20
#: The demo's AdamW: PyTorch's defaults, which most users start from.
DEMO_ADAMW = {"lr": 1e-3, "weight_decay": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8}
#: The two optimizers the demo compares.
DEMO_OPTIMIZERS = ("lion", "adamw")


class History(NamedTuple):
    """What one demo run returns: the mean training loss of each epoch, test accuracy, seconds."""

    losses: list[float]
    accuracy: float
    seconds: float


class DemoData(NamedTuple):
    """The digits split: float32 images scaled to [0, 1] (N x 64) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def demo_data() -> DemoData:
    """Returns scikit-learn's digits, split 80/20 (stratified, fixed), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=0.2, stratify=y, random_state=0
    )
    return DemoData(x_train, y_train, x_test, y_test)


def demo_init(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns the MLP's initial ``(kernel, bias)`` per layer: Glorot-uniform kernels (in x out), zero biases.

    Every backend loads these same arrays (PyTorch transposes the kernels), so runs differ only by
    the optimizer and by floating-point reduction order.
    """
    rng = np.random.default_rng(seed)
    sizes = (64, *DEMO_HIDDEN, 10)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        layers.append((kernel, np.zeros(fan_out, np.float32)))
    return layers


def demo_batches(n: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Returns the minibatch indices of one epoch, the same on every backend."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i : i + DEMO_BATCH] for i in range(0, n, DEMO_BATCH)]


def demo_settings(optimizer: str) -> dict[str, Any]:
    """Returns the hyperparameters of ``"adamw"`` or ``"lion"`` (Lion's from :func:`from_adamw`)."""
    if optimizer == "adamw":
        return dict(DEMO_ADAMW)
    if optimizer == "lion":
        lion: LionSettings = from_adamw(
            DEMO_ADAMW["lr"], DEMO_ADAMW["weight_decay"], DEMO_ADAMW["betas"]
        )
        return {"lr": lion.lr, "weight_decay": lion.weight_decay, "betas": (lion.beta1, lion.beta2)}
    raise ValueError(f"Invalid `optimizer`: expected one of {DEMO_OPTIMIZERS}. Received: optimizer={optimizer!r}")


# --------------------------------------------------------------------------------------------------
# Backends.
# --------------------------------------------------------------------------------------------------


class Backend(NamedTuple):
    """A demo backend: the modules it needs, its demo module, and the extra that installs it."""

    name: str
    label: str
    requires: tuple[str, ...]
    module: str
    extra: str


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", "PyTorch", ("torch",), "lion_torch.demo", "torch"),
    "keras": Backend("keras", "Keras 3", ("keras",), "lion_keras.demo", "keras"),
    "jax": Backend("jax", "JAX/Optax", ("jax", "optax"), "lion_optax.demo", "jax"),
}
#: The function each backend's demo module provides:
#: ``run_recipe(optimizer: str, *, epochs: int, seed: int, on_epoch=None) -> History``, which trains
#: this module's recipe with ``"lion"`` or ``"adamw"`` and calls ``on_epoch(epoch, mean_loss)``.
RECIPE = "run_recipe"
#: Keras backends the demo picks from, in this order, when ``KERAS_BACKEND`` is not set.
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
DISTRIBUTION = "lionkit"


class CommandError(Exception):
    """An error the command reports in one line, without a traceback (exit status 1)."""


def _install_hint(extra: str) -> str:
    return f"install {DISTRIBUTION}[{extra}] (pip install '{DISTRIBUTION}[{extra}]')"


def _missing(names: Sequence[str]) -> list[str]:
    """Returns the modules of ``names`` that cannot be imported (honouring ``sys.modules[name] = None``)."""
    missing = []
    for name in names:
        if name in sys.modules:
            if sys.modules[name] is None:
                missing.append(name)
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _choose_keras_backend() -> None:
    """Sets ``KERAS_BACKEND`` to the first installed of jax, torch, tensorflow, before Keras is imported.

    Keras reads the variable once, at import; a user's own setting (or an already imported Keras) wins.
    """
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):
        return
    for name in KERAS_BACKENDS:
        if not _missing([name]):
            os.environ["KERAS_BACKEND"] = name
            return
    raise CommandError(
        "Keras 3 needs one of its backends (jax, torch or tensorflow); none is installed: "
        + _install_hint("jax")
    )


def load_backend(name: str) -> Any:
    """Imports and returns the demo module of backend ``name``; ``CommandError`` if it is not installed."""
    backend = BACKENDS[name]
    missing = _missing(backend.requires)
    if missing:
        raise CommandError(
            f"The {name} backend is not installed (cannot import {', '.join(missing)}): "
            + _install_hint(backend.extra)
        )
    if name == "keras":
        _choose_keras_backend()
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if error.name == backend.module or top in ("lion_core", "lion_torch", "lion_keras", "lion_optax"):
            raise CommandError(
                f"This lionkit installation has no {backend.module} ({error}): reinstall lionkit"
            ) from error
        extra = "demo" if top in ("sklearn", "matplotlib", "tqdm") else backend.extra
        raise CommandError(f"The {name} backend cannot run the demo ({error}): " + _install_hint(extra)) from error
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


# --------------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------------


def prepare_out(path: str | os.PathLike[str]) -> Path:
    """Creates the output folder if needed and checks that a file can be written in it.

    Run before any training, so that an unwritable path fails in a second, not after two minutes.
    ``os.access`` is not enough (it says yes to root on a read-only file system): a file is written.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise NotADirectoryError(f"not a directory: '{out}'")
        with tempfile.NamedTemporaryFile(dir=out, prefix=".lion-write-check-"):
            pass
    except OSError as error:
        raise CommandError(f"Cannot write to --out '{out}': {error}") from error
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Formats a markdown table, columns padded to a common width."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def _figure(width: float, height: float) -> Any:
    # matplotlib's object API with the Agg canvas: no pyplot, no GUI backend, no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _stamp() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _machine() -> str:
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}{load}"


# --------------------------------------------------------------------------------------------------
# lion demo
# --------------------------------------------------------------------------------------------------


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
            f"{r.history.seconds:.1f}",
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

    figure = _figure(11, 4.5)
    curves, bars = figure.subplots(1, 2, width_ratios=(3, 2))
    colours = {"lion": "C1", "adamw": "C0"}
    styles: dict[str, tuple[str, str]] = {}
    for r in results:
        style, marker = styles.setdefault(r.backend, (("-", "--", ":", "-.")[len(styles) % 4], "osd^"[len(styles) % 4]))
        epochs = np.arange(1, len(r.history.losses) + 1)
        curves.plot(epochs, r.history.losses, color=colours.get(r.optimizer, "C2"), linestyle=style, marker=marker,
                    markevery=max(1, len(epochs) // 10), markersize=4, label=f"{r.backend} {r.optimizer}")
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
        bars.annotate(f"{r.history.seconds:.1f} s, {100 * r.history.accuracy:.1f}% test acc.", (r.history.seconds, y),
                      xytext=(3, 0), textcoords="offset points", va="center", fontsize="x-small")
    bars.set_xlim(0, 1.6 * max(r.history.seconds for r in results))
    bars.set_xlabel("seconds (training, including compilation)")
    bars.set_title("Time and test accuracy", fontsize="medium")
    bars.grid(True, axis="x", alpha=0.3)
    figure.suptitle("lion demo: an MLP on scikit-learn digits")
    figure.savefig(path)


def _demo(args: argparse.Namespace) -> int:
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    if args.backend == "all":
        available = [n for n in names if not _missing(BACKENDS[n].requires)]
        for n in names:
            if n not in available:
                print(f"lion demo: skipping {n}: not installed; {_install_hint(BACKENDS[n].extra)}", file=sys.stderr)
        if not available:
            raise CommandError("No backend is installed: " + _install_hint("torch") + ", or [keras] or [jax]")
        names = available
    else:
        missing = _missing(BACKENDS[args.backend].requires)
        if missing:
            load_backend(args.backend)  # raises the not-installed error
    demo_missing = _missing(("sklearn", "matplotlib", "tqdm"))
    if demo_missing:
        raise CommandError(f"lion demo needs {', '.join(demo_missing)}: " + _install_hint("demo"))
    out = prepare_out(args.out)
    machine, stamp, start = _machine(), _stamp(), time.perf_counter()

    results = run_demo(names, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    table = demo_table(results)
    print(table)
    png = out / "lion-demo.png"
    plot_demo(results, png)
    command = "lion demo " + " ".join(args.argv)
    (out / "lion-demo.md").write_text(
        f"`{command.strip()}` on {stamp} ({machine}); {args.epochs} epochs, seed {args.seed}; "
        f"{time.perf_counter() - start:.0f} s in all.\n\n"
        f"{table}\n"
    )
    print(f"\nwrote {png} and {out / 'lion-demo.md'}")
    return 0


# --------------------------------------------------------------------------------------------------
# lion bench
# --------------------------------------------------------------------------------------------------


class Benchmark(NamedTuple):
    """A benchmark script of ``benchmarks/`` and what it needs to run."""

    name: str
    script: str
    requires: tuple[str, ...]
    extra: str
    needs_cuda: bool
    description: str
    quick: tuple[str, ...]  # the script's arguments for a short smoke run (``lion bench --quick``)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("torch-cpu", "bench_torch_cpu.py", ("torch",), "bench", False,
                  "lion_torch.Lion step on the CPU vs lion-pytorch, torch-optimi, pytorch_optimizer",
                  ("--quick",)),
        Benchmark("torch-cuda", "bench_torch_cuda.py", ("torch", "triton"), "triton", True,
                  "lion_torch.Lion(fused=True) Triton step vs fused AdamW and the peers, on CUDA",
                  ("--scale", "0.1", "--repeats", "5")),
        Benchmark("optax", "bench_optax.py", ("jax", "optax"), "jax", False,
                  "lion_optax.lion vs optax.lion and optax.adamw under jit", ("--quick",)),
    )
}


def find_benchmarks(explicit: str | None = None) -> Path:
    """Returns the ``benchmarks/`` folder: ``--benchmarks``, else the source checkout's, else ``./benchmarks``.

    The benchmarks are scripts of the source repository, not part of the installed packages (they
    need the peers of the ``bench`` extra); an editable install or a checkout on ``sys.path`` finds them.
    """
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parents[1] / "benchmarks",
        Path.cwd() / "benchmarks",
    ]
    for folder in candidates:
        if folder.is_dir() and any((folder / b.script).is_file() for b in BENCHMARKS.values()):
            return folder
    raise CommandError(
        "lion bench runs the scripts in the benchmarks/ folder of a lionkit source checkout, and none was "
        f"found (looked in: {', '.join(str(c) for c in candidates)}). Clone the repository and run "
        "`lion bench` from it, or pass --benchmarks PATH/TO/benchmarks"
    )


def _cuda_available() -> bool:
    if _missing(("torch",)):
        return False
    import torch

    return bool(torch.cuda.is_available())


TABLE_LINE = re.compile(r"^\s*\|.*\|\s*$")


def parse_markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Returns the ``(header, rows)`` of every markdown table in ``text``."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if TABLE_LINE.match(line):
            block.append(line)
            continue
        if len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "):
            split = [[c.strip() for c in row.strip().strip("|").split("|")] for row in block]
            tables.append((split[0], split[2:]))
        block = []
    return tables


def _number(cell: str) -> float | None:
    match = re.match(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", cell.replace(",", ""))
    return float(match.group(1)) if match else None


class BenchResult(NamedTuple):
    """One benchmark script's run: its name, stdout and the tables parsed out of it."""

    name: str
    output: str
    tables: list[tuple[list[str], list[list[str]]]]


def run_benchmark(benchmark: Benchmark, folder: Path, extra_args: Sequence[str]) -> BenchResult:
    """Runs one script with this Python, streaming its output; raises ``CommandError`` if it fails."""
    command = [sys.executable, str(folder / benchmark.script), *extra_args]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True, cwd=folder.parent)
    assert process.stdout is not None  # noqa: S101 (Popen was given stdout=PIPE)
    lines = []
    for line in process.stdout:
        lines.append(line)
        print(line, end="", file=sys.stderr, flush=True)
    peak = None
    if hasattr(os, "wait4"):
        # Reaping the child ourselves gives its resource usage: the peak resident memory of the run.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    if process.wait() != 0:
        raise CommandError(f"{benchmark.script} failed with exit status {process.returncode}")
    if peak is not None:
        lines.append(f"# peak memory (resident) of the whole script process: {peak / 2**20:,.0f} MiB\n")
    output = "".join(lines)
    return BenchResult(benchmark.name, output, parse_markdown_tables(output))


def bench_notes(output: str) -> list[str]:
    """A script's context lines: its ``#`` header (date, device, versions) and what follows its last table."""
    lines = output.splitlines()
    last_table = max((i for i, line in enumerate(lines) if TABLE_LINE.match(line)), default=len(lines))
    return [line.rstrip() for i, line in enumerate(lines)
            if line.strip() and (line.startswith("#") or i > last_table)]


def _value_column(header: Sequence[str]) -> int | None:
    for i, name in enumerate(header):
        if re.search(r"\bms\b|ms/step|ms per step", name, re.IGNORECASE):
            return i
    return None


def _bench_panels(result: BenchResult) -> list[tuple[str, str, list[str], list[float]]]:
    """Splits a script's tables into plot panels: one per table, or one per value of a ``case`` column."""
    panels = []
    for index, (header, rows) in enumerate(result.tables):
        column = _value_column(header)
        if column is None:
            continue
        lower = [name.lower() for name in header]
        case = lower.index("case") if "case" in lower else None
        label_columns = [i for i, name in enumerate(lower) if i not in (column, case)
                         and name in ("implementation", "optimizer", "name", "path")]
        groups: dict[str, tuple[list[str], list[float]]] = {}
        for row in rows:
            value = _number(row[column]) if column < len(row) else None
            if value is None:
                continue
            if label_columns:
                label = " / ".join(row[i] for i in label_columns if i < len(row))
            else:
                label = " / ".join(c for i, c in enumerate(row) if i not in (column, case) and _number(c) is None)
            title = result.name if len(result.tables) == 1 else f"{result.name} ({index + 1})"
            if case is not None and case < len(row):
                title = f"{title}: {row[case]}"
            labels, values = groups.setdefault(title, ([], []))
            labels.append(label)
            values.append(value)
        panels += [(title, header[column], labels, values) for title, (labels, values) in groups.items()]
    return panels


def _bar_colour(label: str) -> str:
    """Orange for lionkit's rows, grey for references (rooflines, prototypes), blue for the peers."""
    lower = label.lower()
    if "roofline" in lower or "prototype" in lower:
        return "0.6"
    if "lionkit" in lower or "lion_optax" in lower or "lion_torch" in lower or "lion_keras" in lower or "ours" in lower:
        return "C1"
    return "C0"


def plot_bench(results: Sequence[BenchResult], path: Path) -> int:
    """Plots each table's step time (its first ``ms`` column) as bars, one panel per table or case.

    Returns the number of panels; nothing is written when no table has an ``ms`` column.
    """
    panels = [panel for result in results for panel in _bench_panels(result)]
    if not panels:
        return 0
    heights = [1.2 + 0.3 * len(labels) for _, _, labels, _ in panels]
    figure = _figure(10, max(3.0, sum(heights)))
    grid = figure.add_gridspec(len(panels), 1, height_ratios=heights)
    for slot, (title, unit, labels, values) in enumerate(panels):
        axes = figure.add_subplot(grid[slot])
        positions = np.arange(len(values))
        axes.barh(positions, values, color=[_bar_colour(label) for label in labels])
        axes.set_yticks(positions, labels, fontsize="small")
        axes.invert_yaxis()
        if max(values) > 20 * min(values):  # one slow row would squash every other bar
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            axes.set_xscale("log")
            axes.set_xlim(0.7 * min(values), 2.0 * max(values))
            axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(ScalarFormatter())
            axes.xaxis.set_minor_formatter(NullFormatter())
            unit += ", log scale"
        else:
            axes.set_xlim(0, 1.15 * max(values))
        axes.set_xlabel(unit + " (lower is better)", fontsize="small")
        axes.set_title(title, fontsize="medium", loc="left")
        for y, v in zip(positions, values):
            axes.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center",
                          fontsize="x-small")
        axes.grid(True, axis="x", alpha=0.3)
    figure.suptitle("lion bench: lionkit (orange), peers (blue), references (grey)", fontsize="medium")
    figure.savefig(path)
    return len(panels)


def _bench(args: argparse.Namespace) -> int:
    folder = find_benchmarks(args.benchmarks)
    selected = [BENCHMARKS[n] for n in (args.only or list(BENCHMARKS))]
    plan, skipped = [], []
    for benchmark in selected:
        if not (folder / benchmark.script).is_file():
            skipped.append((benchmark.name, f"{benchmark.script} is not in {folder}"))
        elif _missing(benchmark.requires):
            skipped.append((benchmark.name, f"needs {', '.join(_missing(benchmark.requires))}: "
                            + _install_hint(benchmark.extra)))
        elif benchmark.needs_cuda and not _cuda_available():
            skipped.append((benchmark.name, "no CUDA device"))
        else:
            plan.append(benchmark)
    for name, reason in skipped:
        print(f"lion bench: skipping {name}: {reason}", file=sys.stderr)
    if not plan:
        raise CommandError("No benchmark can run here: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    out = prepare_out(args.out)
    machine, stamp, start = _machine(), _stamp(), time.perf_counter()

    results = [run_benchmark(b, folder, [*(b.quick if args.quick else ()), *args.script_args]) for b in plan]
    sections = [f"`lion bench {' '.join(args.argv)}`".replace(" `", "`")
                + f" on {stamp} ({machine}); {time.perf_counter() - start:.0f} s in all."]
    for result in results:
        tables = [markdown_table(h, r) for h, r in result.tables]
        notes = bench_notes(result.output)
        sections.append(f"## {result.name}\n\n{BENCHMARKS[result.name].description}.\n\n" + (
            "\n\n".join(tables) if tables else "(the script printed no markdown table)")
            + ("\n\n" + "\n".join(f"    {line}" for line in notes) if notes else ""))
    for name, reason in skipped:
        sections.append(f"## {name}\n\nSkipped: {reason}.")
    report = "\n\n".join(sections) + "\n"
    print(report)
    png = out / "lion-bench.png"
    written = [out / "lion-bench.md"]
    (out / "lion-bench.md").write_text(report)
    if plot_bench(results, png):
        written.insert(0, png)
    else:
        print("lion bench: no table had an ms/step column; no plot written", file=sys.stderr)
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


# --------------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``lion`` argument parser (``lion demo``, ``lion bench``)."""
    parser = argparse.ArgumentParser(
        prog="lion",
        description="Lion optimizer tools: a training demo against AdamW, and step-time benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

    demo = commands.add_parser(
        "demo", help="train an MLP on scikit-learn digits with Lion and AdamW on each installed backend",
        description="Trains the same MLP on scikit-learn's digits with Lion and with AdamW (Lion's lr and "
        "weight decay from lion_core.from_adamw), prints final loss, test accuracy and time, and writes "
        "lion-demo.png (loss curves) and lion-demo.md (the table) to --out.",
    )
    demo.add_argument("--backend", choices=[*BACKENDS, "all"], default="all",
                      help="which framework to train with (default: all installed ones)")
    demo.add_argument("--epochs", type=_positive_int, default=DEMO_EPOCHS,
                      help=f"epochs per run (default: {DEMO_EPOCHS})")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order (default: 0)")
    demo.add_argument("--out", default="lion-demo",
                      help="folder for lion-demo.png and lion-demo.md, created if needed (default: lion-demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench", help="run the step-time benchmarks of a source checkout's benchmarks/ folder",
        description="Runs the benchmark scripts of benchmarks/ (ours vs the peers, one process each), "
        "prints their markdown tables and writes lion-bench.md and lion-bench.png (step times) to --out. "
        "Benchmarks whose framework or device is missing are skipped with the reason.",
    )
    bench.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                       help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    bench.add_argument("--quick", action="store_true",
                       help="a short smoke run of each script (smaller or fewer steps); figures are rough")
    bench.add_argument("--benchmarks", metavar="DIR", help="the benchmarks/ folder (default: the source checkout's)")
    bench.add_argument("--out", default="lion-bench",
                       help="folder for lion-bench.md and lion-bench.png, created if needed (default: lion-bench)")
    bench.add_argument("script_args", nargs=argparse.REMAINDER,
                       help="after --, arguments passed to every benchmark script")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``lion`` command; returns its exit status (2: bad arguments, 1: an error, 0: done)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    if getattr(args, "script_args", None) and args.script_args[0] == "--":
        args.script_args = args.script_args[1:]
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"lion {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
