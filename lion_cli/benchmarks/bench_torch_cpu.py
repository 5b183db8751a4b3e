"""Times one Lion ``step()`` on the CPU: every lionkit path against the other PyTorch Lions.

Two parameter sets, both float32:

* (a) 40M parameters in 10 tensors: bandwidth-bound; the question is how close a step gets to the
  memory roofline.
* (b) 2M parameters in 400 tensors: a model with many small layers; per-tensor Python and dispatch
  overhead dominates unless the step is one call for all tensors.

A Lion step must read p, g, m and write p, m: 20 bytes per float32 parameter. The roofline is an
in-place ``x.add_(y)`` on two flat float32 buffers of 5N/3 elements each, which moves exactly the 20N
bytes of one Lion step on N parameters (read x, read y, write x: 12 bytes per element) with one read
stream per written stream more than Lion has; its time is the "roofline" and each row's ratio to it
says how much of the step is not memory traffic. It is timed in the same rounds as the optimizers.

Every optimizer steps the same parameters and gradients (weight decay on, so every peer does its
decay work); its state is created in the warm-up steps. The implementations take turns, one step
each per round, so load from other processes spreads over all rows. Reported: the median (and the
minimum) of ``--repeats`` timed steps after ``--warmup`` untimed ones, GB/s at 20 bytes per
parameter, the ratio to the roofline and
the speedup over the fastest peer.

Usage:
  python benchmarks/bench_torch_cpu.py            # the figures in docs/benchmarks-cpu.md
  python benchmarks/bench_torch_cpu.py --quick    # a smoke run on a tenth of the parameters, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


from lion_kernels import cpu_lion  # noqa: E402

LR, BETAS, WEIGHT_DECAY = 1e-4, (0.9, 0.99), 0.1
BYTES_PER_PARAM = 20
CASES = {"a": (40_000_000, 10), "b": (2_000_000, 400)}


def _roofline(total: int) -> Callable[[], Any]:
    elements = -(-5 * total // 3)
    x, y = torch.rand(elements), torch.rand(elements)
    return lambda: x.add_(y)


def _peer_factories() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    factories: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {}
    hyper = dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    try:
        import lion_pytorch
        import lion_pytorch.foreach

        factories["lion-pytorch Lion (loop)"] = lambda ps: lion_pytorch.Lion(ps, **hyper)
        factories["lion-pytorch foreach Lion"] = lambda ps: lion_pytorch.foreach.Lion(ps, **hyper)
    except ImportError:
        pass
    try:
        import optimi

        factories["torch-optimi Lion (for-loop)"] = lambda ps: optimi.Lion(
            ps, **hyper, foreach=False, triton=False
        )
        factories["torch-optimi Lion (foreach)"] = lambda ps: optimi.Lion(
            ps, **hyper, foreach=True, triton=False
        )
    except ImportError:
        pass
    try:
        import pytorch_optimizer

        factories["pytorch_optimizer Lion (per-param)"] = lambda ps: pytorch_optimizer.Lion(
            ps, **hyper, foreach=False
        )
        factories["pytorch_optimizer Lion (foreach)"] = lambda ps: pytorch_optimizer.Lion(
            ps, **hyper, foreach=True
        )
    except ImportError:
        pass
    return factories


def _our_factories() -> dict[str, Callable[[list[torch.nn.Parameter]], Any]]:
    ours: dict[str, Callable[[list[torch.nn.Parameter]], Any]] = {}
    hyper = dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    try:
        from lion_torch import Lion
    except ImportError:
        Lion = None  # noqa: N806 - lion_torch not landed yet: time the kernel directly below
    if Lion is not None:
        ours["lionkit Lion() default"] = lambda ps: Lion(ps, **hyper)
        ours["lionkit Lion(fused=True)"] = lambda ps: Lion(ps, **hyper, fused=True)
        ours["lionkit Lion(foreach=True)"] = lambda ps: Lion(ps, **hyper, foreach=True, fused=False)
        ours["lionkit Lion single-tensor"] = lambda ps: Lion(ps, **hyper, foreach=False, fused=False)
    if cpu_lion.unavailable_reason() is None:
        ours["lionkit lion_kernels.cpu_lion.lion_ (no optimizer)"] = _KernelOnly
    return ours


class _KernelOnly:
    """The fused kernel without an optimizer around it: the floor for ``Lion(fused=True)``."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.exp_avgs = [torch.zeros_like(p) for p in params]

    def step(self) -> None:
        cpu_lion.lion_(
            self.params, [p.grad for p in self.params], self.exp_avgs, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
            weight_decay=WEIGHT_DECAY, max_lr=None, cautious=False, maximize=False,
        )


def _run_case(name: str, total: int, count: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Times every implementation on one parameter set.

    The implementations take turns, one timed step each per round, so that a burst of load from
    other processes slows every row of a round alike instead of one row's whole sample.
    """
    torch.manual_seed(0)
    size = total // count
    params = [torch.nn.Parameter(torch.randn(size) * 0.02) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size)
    rows: list[dict[str, Any]] = []
    steps: list[Callable[[], Any]] = []
    for group, factories in (("peer", _peer_factories()), ("ours", _our_factories())):
        for label, factory in factories.items():
            rows.append({"case": name, "group": group, "name": label})
            steps.append(factory(params).step)
    rows.append({"case": name, "group": "roofline", "name": "roofline: x.add_(y), 20 B/param"})
    steps.append(_roofline(total))
    times = time_in_rounds(steps, args.warmup, args.repeats)
    for row, samples in zip(rows, times):
        row["ms"] = statistics.median(samples) * 1e3
        row["min_ms"] = min(samples) * 1e3
    roofline = rows[-1]["ms"]
    best_peer = min((row["ms"] for row in rows if row["group"] == "peer"), default=float("nan"))
    for row in rows:
        row["gbs"] = BYTES_PER_PARAM * total / row["ms"] / 1e6
        row["roofline"] = row["ms"] / roofline
        row["speedup"] = best_peer / row["ms"]
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | implementation | ms/step (median) | min ms | GB/s (20 B/param) | x roofline "
        "| speedup vs best peer |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['name']} | {row['ms']:.2f} | {row['min_ms']:.2f} | {row['gbs']:.1f} | "
            f"{row['roofline']:.2f} | {row['speedup']:.2f} |"
        )
    return "\n".join(lines)


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for case in dict.fromkeys(row["case"] for row in rows):
        ours = [row for row in rows if row["case"] == case and row["group"] == "ours"]
        peers = [row for row in rows if row["case"] == case and row["group"] == "peer"]
        if not ours or not peers:
            continue
        best = min(ours, key=lambda row: row["ms"])
        best_peer = min(peers, key=lambda row: row["ms"])
        lines.append(
            f"{case}: fastest ours {best['name']} {best['ms']:.2f} ms = {best['roofline']:.2f}x roofline, "
            f"{best['speedup']:.2f}x faster than the best peer "
            f"({best_peer['name']}, {best_peer['ms']:.2f} ms)"
        )
        default = [row for row in ours if row["name"] == "lionkit Lion() default"]
        if default:
            lines.append(f"{case}: default Lion() {default[0]['speedup']:.2f}x the best peer's speed")
    return lines


def time_in_rounds(steps: list[Callable[[], Any]], warmup: int, repeats: int) -> list[list[float]]:
    """Each step's timed samples (seconds): ``warmup`` untimed calls each, then ``repeats`` rounds in
    which the steps take turns, one call each, so load from other processes spreads over all rows."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for step, samples in zip(steps, times):
                start = time.perf_counter()
                step()
                samples.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _versions() -> str:
    names = ["torch", "lion-pytorch", "torch-optimi", "pytorch_optimizer"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: a tenth of the parameters, 1 warm-up and 3 timed steps",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    parser.add_argument(
        "--repeats", type=int, default=15, help="timed steps; the median is reported (default 15)"
    )
    parser.add_argument("--cases", default="a,b", help="which of a (40M in 10) and b (2M in 400) to run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    scale = 1.0
    if args.quick:
        args.warmup, args.repeats, scale = 1, 3, 0.1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, CPU: {cpu_model()}, "
          f"{torch.get_num_threads()} torch threads, python {platform.python_version()}")
    print(f"# {_versions()}; cpu_lion kernel: {cpu_lion.unavailable_reason() or 'available'}")
    print(f"# load average before: {load_average()} (other processes on the machine slow every row)")
    rows = []
    for case in args.cases.split(","):
        total, count = CASES[case]
        total = int(total * scale)
        label = f"({case}) {total / 1e6:g}M in {count}"
        case_rows = _run_case(label, total, count, args)
        for row in case_rows:
            print(f"{row['case']:>16}  {row['name']:<48} {row['ms']:9.2f} ms  {row['gbs']:6.1f} GB/s  "
                  f"{row['roofline']:5.2f}x roofline  {row['speedup']:5.2f}x best peer", flush=True)
        rows += case_rows
    print()
    print(_table(rows))
    print()
    for line in _verdict(rows):
        print(line)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
