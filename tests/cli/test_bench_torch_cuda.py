"""``bench_torch_cuda``'s smoke run: the CUDA benchmark's script, run on the CPU before a GPU ever is.

No GPU is lent to most sessions, so the script that a GPU session runs first must already work: here
``--smoke`` (the Triton interpreter, 1/20,000 of the parameters) runs cases (a) and (c) end to end and
every lionkit row, the 8-bit rows of issue 12 included, must come back with timings, not an error.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from lion_cli import _common
from lion_cli.benchmarks.bench_torch_cuda import FUSED

from .test_cli import ROOT, _environment


def test_the_smoke_run_times_every_lionkit_row_of_cases_a_and_c(tmp_path: Path) -> None:
    environment = dict(_environment(), TRITON_INTERPRET="1")
    out = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_torch_cuda.py"), "--smoke", "--cases", "a,c",
         "--out", str(out)],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert out.read_text(encoding="utf-8") in result.stdout
    ((header, rows),) = _common.parse_markdown_tables(result.stdout)
    assert header[:5] == ["case", "implementation", "ms/step (median)", "min ms", "B/param"]
    by_case: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        by_case.setdefault(row[0], {})[row[1]] = row
    a = by_case["(a) 1B float32 params, 16 tensors"]
    c = by_case["(c) 1B bfloat16 params, 16 tensors"]
    int8 = "lionkit Lion(fused=True, momentum_dtype='int8')"
    int8_sr = "lionkit Lion(fused=True, momentum_dtype='int8', stochastic_rounding=True)"
    assert int8_sr not in a, "stochastic rounding is a bfloat16 row"
    for rows_of_case, names in ((a, [int8]), (c, [int8, int8_sr])):
        lionkit = [name for name in rows_of_case if name.startswith("lionkit")]
        assert set(names) <= set(lionkit) and len(lionkit) >= 3 + len(names)
        for name in lionkit:
            assert math.isfinite(float(rows_of_case[name][2])), rows_of_case[name]  # a time, not an error
    # the bytes each row must move: p, g read and p written in the parameter's dtype, the state twice
    assert a[int8][4] == "14.03" and c[int8_sr][4] == "8.031"  # 3 * 4 or 3 * 2, plus 2 * (1 + 4 / 256)
    assert a[FUSED][4] == "20" and c[FUSED][4] == "14"
    assert "goals not evaluated in a smoke run" in result.stdout
