"""Times the CPU kernel's state formats: a float32 step against int8 momentum and bf16 parameters.

Issue 12's speed goal, on case (a) of ``bench_torch_cpu`` (40M parameters in 10 tensors, bandwidth
bound): one ``lion_kernels.cpu_lion.lion_`` call per step, the step keys computed per step as a
caller does (``lion_core.step_key``), three rows in one run, taking turns:

* ``float32``: float32 parameters, gradients and momentum: 20 bytes per parameter (read p, g, m;
  write p, m);
* ``int8 momentum``: float32 parameters and gradients, int8 codes with one float32 scale per 256
  (``lion_core.INT8``): 14 bytes (+ 8/256 for the scales);
* ``bf16 params + int8 momentum``: bfloat16 parameters stored by stochastic rounding, bfloat16
  gradients, int8 momentum: 8 bytes (+ 8/256).

Goals (issue 12): the int8-momentum step at most 0.85x the float32 step's time, and the bf16 + int8
step at most 0.5x, as the bytes moved (14/20, 8/20) suggest. A second case, the same rows on 400k
parameters (in cache: 8 MB for the float32 row), measures each row's arithmetic per parameter
without the memory traffic: what a step costs beyond its bytes (the hash of ``lion_core.counter_hash``
per element and rounding, the int8 encoding). Reported: the median and minimum of
``--repeats`` timed steps after ``--warmup`` untimed ones, GB/s at each row's bytes per parameter,
and the ratio of each median to the float32 row's (the ratio is the goal; a loaded machine slows
every row of a round alike, since the rows take turns).

Usage:
  python benchmarks/bench_formats_cpu.py            # the figures in docs/benchmarks-cpu.md
  python benchmarks/bench_formats_cpu.py --quick    # a tenth of the parameters, 3 timed steps
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from typing import Any

import torch
from lion_kernels import cpu_lion

from lion_cli.benchmarks.bench_torch_cpu import cpu_model, load_average, time_in_rounds
from lion_core import INT8, MOMENTUM_STREAM, PARAM_STREAM, derive_seed, step_key

LR, BETA1, BETA2, WEIGHT_DECAY = 1e-4, 0.9, 0.99, 0.1
TOTAL, COUNT = 40_000_000, 10
#: (label, parameters): case (a), and the same rows in cache.
CASES = (("(a)", TOTAL), ("in cache", TOTAL // 100))
SEED = 1234
#: The float32 row first: the others' ratios are to it.
ROWS = ("float32", "int8 momentum", "bf16 params + int8 momentum")
#: Bytes per parameter each row reads and writes (scales: 4 bytes read and written per 256).
BYTES = {"float32": 20.0, "int8 momentum": 14.0 + 8 / 256, "bf16 params + int8 momentum": 8.0 + 8 / 256}
GOALS = {"int8 momentum": 0.85, "bf16 params + int8 momentum": 0.5}


class _Row:
    """One row's tensors and its step: one ``lion_`` call, with this step's keys."""

    def __init__(self, name: str, total: int, count: int) -> None:
        size = total // count
        gen = torch.Generator().manual_seed(0)
        bf16 = name.startswith("bf16")
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.params = [(torch.randn(size, generator=gen) * 0.02).to(dtype) for _ in range(count)]
        self.grads = [torch.randn(size, generator=gen).to(dtype) for _ in range(count)]
        self.int8 = name != "float32"
        self.stochastic = bf16
        if self.int8:
            self.momenta = [torch.zeros(size, dtype=torch.int8) for _ in range(count)]
            self.scales: list[Any] | None = [torch.zeros(INT8.blocks(size)) for _ in range(count)]
        else:
            self.momenta = [torch.zeros(size) for _ in range(count)]
            self.scales = None
        self.momentum_seeds = [derive_seed(SEED, MOMENTUM_STREAM, t) for t in range(count)]
        self.param_seeds = [derive_seed(SEED, PARAM_STREAM, t) for t in range(count)]
        self.steps = 0

    def step(self) -> None:
        step = self.steps
        momentum_keys = [step_key(s, step) for s in self.momentum_seeds] if self.int8 else None
        param_keys = [step_key(s, step) for s in self.param_seeds] if self.stochastic else None
        left = cpu_lion.lion_(
            self.params, self.grads, self.momenta, lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=WEIGHT_DECAY,
            max_lr=None, cautious=False, maximize=False, scales=self.scales, momentum_keys=momentum_keys,
            param_keys=param_keys,
        )
        if left:
            raise RuntimeError(f"the CPU kernel handed back {left}: this benchmark times the kernel only")
        self.steps += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the parameters, 1 warm-up, 3 timed steps")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per row before timing (default 3)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per row; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = 1, 3
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reason = cpu_lion.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"the CPU kernel is unavailable: {reason}")

    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, CPU: {cpu_model()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(f"# load average before: {load_average()} (other processes on the machine slow every row)")
    print("| case | row | bytes/param | ms/step (median) | min ms | ns/param | GB/s | x float32 step "
          "| goal |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for case, (name, size) in enumerate(CASES):
        size = size if not args.quick else size // 10
        label = f"{name}: {size / 1e6:g}M in {COUNT}"
        rows = [_Row(name, size, COUNT) for name in ROWS]
        # The in-cache steps are short: more of them, for a stable median.
        times = time_in_rounds([row.step for row in rows], args.warmup, args.repeats * (1 if case == 0 else 5))
        medians = [statistics.median(samples) * 1e3 for samples in times]
        for name, samples, median in zip(ROWS, times, medians):
            ratio = median / medians[0]
            goal = GOALS.get(name) if case == 0 else None
            verdict = "" if goal is None else f"<= {goal}: {'met' if ratio <= goal else 'not met'}"
            gbs = BYTES[name] * size / median / 1e6
            print(f"| {label} | {name} | {BYTES[name]:.2f} | {median:.2f} | {min(samples) * 1e3:.2f} | "
                  f"{median / size * 1e6:.2f} | {gbs:.1f} | {ratio:.2f} | {verdict} |", flush=True)
        del rows
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
