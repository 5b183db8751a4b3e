"""What ``lion demo`` and ``lion bench`` share: the one-line error, dependency checks, output helpers."""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DISTRIBUTION = "lionkit"


class CommandError(Exception):
    """An error the command reports in one line, without a traceback (exit status 1)."""


def install_hint(extra: str) -> str:
    """The remedy for a missing extra: ``install lionkit[extra] (pip install 'lionkit[extra]')``."""
    return f"install {DISTRIBUTION}[{extra}] (pip install '{DISTRIBUTION}[{extra}]')"


def missing(names: Sequence[str]) -> list[str]:
    """Returns the modules of ``names`` that cannot be imported (honouring ``sys.modules[name] = None``)."""
    absent = []
    for name in names:
        if name in sys.modules:
            if sys.modules[name] is None:
                absent.append(name)
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


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


def significant(value: float, digits: int = 3) -> str:
    """Formats ``value`` with ``digits`` significant digits in plain notation: 0.0412, 1.23, 123, 4567.

    Used for times: a fixed number of decimals prints a 0.04 s run as ``0.0``.
    """
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Formats a markdown table, columns padded to a common width."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


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


def figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas: no pyplot, no GUI backend, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(result)
    return result


def stamp() -> str:
    """The local date and time, for reports."""
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def machine() -> str:
    """The machine, for reports: architecture, cores, Python, load average."""
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}{load}"
