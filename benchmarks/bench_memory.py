"""Runs :mod:`lion_cli.benchmarks.bench_memory` as ``python benchmarks/bench_memory.py``.

The benchmark ships inside ``lion_cli``, so that ``lion bench`` works from an installed wheel; this
file keeps the checkout's command working, with the checkout first on the path.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    runpy.run_module("lion_cli.benchmarks.bench_memory", run_name="__main__", alter_sys=True)
