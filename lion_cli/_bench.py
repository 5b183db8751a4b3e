"""``lion bench``: runs the step-time benchmarks of :mod:`lion_cli.benchmarks`, one process each.

The benchmark scripts ship inside ``lion_cli``, so ``lion bench`` works from an installed wheel, in
any folder; ``--benchmarks DIR`` runs same-named scripts from a folder instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import site
import subprocess
import sys
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._common import (
    TABLE_LINE,
    CommandError,
    figure,
    install_hint,
    machine,
    markdown_table,
    missing,
    parse_markdown_tables,
    prepare_out,
    significant,
    stamp,
)

#: The package whose modules are the benchmark scripts.
PACKAGE = "lion_cli.benchmarks"


class Benchmark(NamedTuple):
    """A benchmark script of :mod:`lion_cli.benchmarks` and what it needs to run."""

    name: str
    script: str
    requires: tuple[str, ...]
    extra: str
    needs_cuda: bool
    description: str
    quick: tuple[str, ...]  # the script's arguments for a short smoke run (``lion bench --quick``)

    @property
    def module(self) -> str:
        """The script's module, run with ``python -m``."""
        return f"{PACKAGE}.{Path(self.script).stem}"


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
        Benchmark("keras-torch", "bench_keras_torch.py", ("keras", "torch"), "keras", False,
                  "lion_keras.Lion vs keras.optimizers.Lion under model.fit on the PyTorch backend",
                  ("--quick",)),
        Benchmark("torch-distributed", "bench_distributed.py", ("torch", "matplotlib", "sklearn"),
                  "torch,demo", False,
                  "DistributedLion's bytes per parameter vs gradient all-reduces, 2-8 gloo ranks; quality",
                  ("--quick",)),
    )
}


def find_benchmarks(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Returns the folder of ``--benchmarks``, checked, or ``None`` for the scripts shipped in ``lion_cli``.

    Raises ``CommandError`` when the folder holds none of the scripts.
    """
    if explicit is None:
        return None
    folder = Path(explicit)
    if folder.is_dir() and any((folder / b.script).is_file() for b in BENCHMARKS.values()):
        return folder
    raise CommandError(
        f"--benchmarks '{folder}' is not a folder holding any of the benchmark scripts "
        f"({', '.join(b.script for b in BENCHMARKS.values())}); leave --benchmarks out to run the ones "
        "installed with lionkit"
    )


def _available(benchmark: Benchmark, folder: Path | None) -> bool:
    if folder is not None:
        return (folder / benchmark.script).is_file()
    try:
        return importlib.util.find_spec(benchmark.module) is not None
    except ImportError:
        return False


def _cuda_available() -> bool:
    if missing(("torch",)):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _number(cell: str) -> float | None:
    match = re.match(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", cell.replace(",", ""))
    return float(match.group(1)) if match else None


class BenchResult(NamedTuple):
    """One benchmark script's run: its name, stdout and the tables parsed out of it."""

    name: str
    output: str
    tables: list[tuple[list[str], list[list[str]]]]


def _child_environment() -> dict[str, str]:
    """The scripts' environment: this one, plus the folder that holds ``lion_cli`` when it is no site folder.

    A source checkout used through ``PYTHONPATH`` or the current folder is then found by the child too;
    an installed ``lion_cli`` is found as usual, and its site folder is not pushed ahead of the stdlib.
    """
    environment = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    site_folders = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in site_folders:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environment.get("PYTHONPATH")]))
    return environment


def run_benchmark(benchmark: Benchmark, folder: Path | None, extra_args: Sequence[str]) -> BenchResult:
    """Runs one script with this Python, streaming its output; raises ``CommandError`` if it fails.

    ``folder`` ``None`` runs the installed module (``python -m lion_cli.benchmarks...``) in the current
    folder; a folder runs its script from the folder's parent.
    """
    if folder is None:
        command, cwd = [sys.executable, "-m", benchmark.module, *extra_args], None
    else:
        command, cwd = [sys.executable, str(folder / benchmark.script), *extra_args], folder.parent
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True, cwd=cwd,
                               env=_child_environment())
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
                label = " / ".join(c for i, c in enumerate(row)
                                   if i not in (column, case) and _number(c) is None)
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
    if any(ours in lower for ours in ("lionkit", "lion_optax", "lion_torch", "lion_keras", "ours")):
        return "C1"
    return "C0"


#: Named colours of ``_bar_colour`` as SVG fills (matplotlib's C0, C1 and a mid grey).
_SVG_FILLS = {"C0": "#1f77b4", "C1": "#ff7f0e", "0.6": "#999999"}


def plot_bench_svg(panels: Sequence[tuple[str, str, list[str], list[float]]], path: Path) -> None:
    """The plot of :func:`plot_bench` as a plain SVG (linear axes), written with the standard library,
    for an installation without matplotlib (``lionkit[torch]`` alone): the plot needs no extra."""
    row, width, label_width, y = 18, 900, 380, 30
    parts = ['<text x="8" y="18" font-size="14">lion bench: lionkit (orange), peers (blue), '
             "references (grey); step time, lower is better</text>"]
    for title, unit, labels, values in panels:
        y += 24
        parts.append(f'<text x="8" y="{y}" font-size="13">{escape(title)} ({escape(unit)})</text>')
        scale = (width - label_width - 80) / max(max(values), 1e-12)
        for label, value in zip(labels, values):
            y += row
            fill = _SVG_FILLS[_bar_colour(label)]
            parts.append(f'<text x="{label_width - 6}" y="{y}" font-size="11" text-anchor="end">'
                         f"{escape(label)}</text>")
            parts.append(f'<rect x="{label_width}" y="{y - 12}" width="{value * scale:.1f}" height="14" '
                         f'fill="{fill}"/>')
            parts.append(f'<text x="{label_width + value * scale + 4:.1f}" y="{y}" font-size="10">'
                         f"{value:.3g}</text>")
    body = "\n".join(parts)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 20}" '
                    f'font-family="sans-serif">\n{body}\n</svg>\n', encoding="utf-8")


def plot_bench(results: Sequence[BenchResult], path: Path) -> int:
    """Plots each table's step time (its first ``ms`` column) as bars, one panel per table or case.

    Writes ``path`` (a PNG) with matplotlib; where matplotlib is not installed, the same bars as an SVG
    next to it (``path`` with the suffix ``.svg``). Returns the number of panels; nothing is written
    when no table has an ``ms`` column.
    """
    panels = [panel for result in results for panel in _bench_panels(result)]
    if not panels:
        return 0
    if missing(["matplotlib"]):
        plot_bench_svg(panels, path.with_suffix(".svg"))
        return len(panels)
    heights = [1.2 + 0.3 * len(labels) for _, _, labels, _ in panels]
    plot = figure(10, max(3.0, sum(heights)))
    grid = plot.add_gridspec(len(panels), 1, height_ratios=heights)
    for slot, (title, unit, labels, values) in enumerate(panels):
        axes = plot.add_subplot(grid[slot])
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
    plot.suptitle("lion bench: lionkit (orange), peers (blue), references (grey)", fontsize="medium")
    plot.savefig(path)
    return len(panels)


def run(args: argparse.Namespace) -> int:
    """Runs ``lion bench`` with parsed arguments; returns the exit status."""
    folder = find_benchmarks(args.benchmarks)
    selected = [BENCHMARKS[n] for n in (args.only or list(BENCHMARKS))]
    plan, skipped = [], []
    for benchmark in selected:
        if not _available(benchmark, folder):
            where = folder if folder is not None else "this lionkit installation (reinstall lionkit)"
            skipped.append((benchmark.name, f"{benchmark.script} is not in {where}"))
        elif missing(benchmark.requires):
            skipped.append((benchmark.name, f"needs {', '.join(missing(benchmark.requires))}: "
                            + install_hint(benchmark.extra)))
        elif benchmark.needs_cuda and not _cuda_available():
            skipped.append((benchmark.name, "no CUDA device"))
        else:
            plan.append(benchmark)
    for name, reason in skipped:
        print(f"lion bench: skipping {name}: {reason}", file=sys.stderr)
    if not plan:
        raise CommandError("No benchmark can run here: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    out = prepare_out(args.out)
    where, when, start = machine(), stamp(), time.perf_counter()

    results = [run_benchmark(b, folder, [*(b.quick if args.quick else ()), *args.script_args]) for b in plan]
    sections = [f"`lion bench {' '.join(args.argv)}`".replace(" `", "`")
                + f" on {when} ({where}); {significant(time.perf_counter() - start)} s in all."]
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
        written.insert(0, png if png.exists() else png.with_suffix(".svg"))
    else:
        print("lion bench: no table had an ms/step column; no plot written", file=sys.stderr)
    print("wrote " + " and ".join(str(p) for p in written))
    return 0
