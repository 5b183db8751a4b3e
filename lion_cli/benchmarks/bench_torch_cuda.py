"""Times one optimizer ``step()`` on a CUDA GPU: the fused Triton Lion against the other PyTorch steps.

Three parameter sets (issue 5), every implementation stepping the same parameters and gradients:

* (a) 1B float32 parameters in 16 large tensors: bandwidth-bound. Goal: at least 85% of the
  device's measured copy bandwidth, and at most 0.75x the time of ``torch.optim.AdamW(fused=True)``.
* (b) 1,000 float32 tensors of 65,536 elements: launch- and overhead-bound. Goal: at least 3x
  faster than lion-pytorch's Triton path (one launch per tensor).
* (c) 1B bfloat16 parameters (and gradients) in 16 tensors, lionkit with a float32 momentum.

The state formats of issue 12, in the same runs: ``Lion(fused=True, momentum_dtype="int8")`` on (a)
and (c) (an 8-bit momentum: 14.03 bytes per float32 parameter instead of 20), and with
``stochastic_rounding=True`` on (c) (bfloat16 parameters with an 8-bit momentum: 8.03 bytes). Goals:
the int8 step at most 0.85x the float32 fused step on (a), and the bfloat16 + int8 step on (c) at most
0.5x the float32 fused step on (a) (the same parameter count). Next to them, where it is installed,
bitsandbytes' ``Lion8bit`` (counted with the same state bytes: 8-bit codes and one float32 absmax per
block of 256 elements, its blockwise default).

Implementations: lionkit's kernel called directly (``lion_kernels.triton_lion.lion_``, no optimizer
around it), ``lion_torch.Lion(fused=True)``, ``lion_torch.Lion(foreach=True)``,
``torch.optim.AdamW(fused=True)``, lion-pytorch ``Lion(use_triton=True)`` and torch-optimi
``Lion(triton=True, kahan_sum=False)``. Weight decay is on for all (0.1), lr 1e-4, betas (0.9, 0.99).
Each optimizer's state is created in the warm-up steps (which also compile and autotune). The
implementations then take turns, one timed step each per round, so that clock and thermal drift
affect every row alike.

Measured: each step between two CUDA events recorded on the current stream after a
``torch.cuda.synchronize()``, so the time includes any gap in which the GPU waits for the host to
launch work; the median over ``--repeats`` rounds (and the minimum). GB/s counts the bytes the
algorithm must move per parameter with that implementation's state dtypes (Lion float32: read p, g, m
and write p, m = 20 B; AdamW float32: 28 B; bfloat16 p and g with a float32 momentum: 14 B), divided
by the median time; "of copy" divides that by the bandwidth of ``dst.copy_(src)`` on two 2 GiB
buffers (2 x 2 GiB moved per copy), measured in the same run. "vs AdamW" is the time ratio to the
fused AdamW step on the same parameters.

Usage (on a machine with a CUDA GPU; about 80 GiB of GPU memory for the default sizes):
  python benchmarks/bench_torch_cuda.py --out docs/benchmarks-cuda-results.md
  python benchmarks/bench_torch_cuda.py --scale 0.25           # a quarter of the parameters
  python benchmarks/bench_torch_cuda.py --cases b --repeats 50
  TRITON_INTERPRET=1 python benchmarks/bench_torch_cuda.py --smoke   # no GPU: checks the script only
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
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


from lion_kernels import triton_lion  # noqa: E402

LR, BETAS, WEIGHT_DECAY = 1e-4, (0.9, 0.99), 0.1
#: case -> (total parameters, tensors, parameter dtype)
CASES: dict[str, tuple[int, int, torch.dtype]] = {
    "a": (1_000_000_000, 16, torch.float32),
    "b": (1_000 * 65_536, 1_000, torch.float32),
    "c": (1_000_000_000, 16, torch.bfloat16),
}
CASE_TITLES = {
    "a": "(a) 1B float32 params, 16 tensors",
    "b": "(b) 1,000 float32 tensors of 64K",
    "c": "(c) 1B bfloat16 params, 16 tensors",
}
COPY_BYTES = 2 << 30
FUSED = "lionkit Lion(fused=True)"
FUSED_INT8 = "lionkit Lion(fused=True, momentum_dtype='int8')"
FUSED_INT8_SR = "lionkit Lion(fused=True, momentum_dtype='int8', stochastic_rounding=True)"
#: Bytes of an 8-bit blockwise momentum per parameter: one int8 code, one float32 scale per 256 codes.
INT8_STATE = 1 + 4 / 256


def _int8_state(dtype: torch.dtype) -> float:
    return INT8_STATE
ADAMW = "torch AdamW(fused=True)"
LION_PYTORCH = "lion-pytorch Lion(use_triton=True)"


@dataclass
class Method:
    """One implementation: how to build its step, and the bytes per parameter it must move."""

    name: str
    build: Callable[[list[torch.nn.Parameter]], Callable[[], Any]]
    state_bytes: Callable[[torch.dtype], float]  # bytes of state per parameter, read once and written once
    needs_cuda: bool = False
    #: The parameter dtypes the row is run for (None: every case).
    dtypes: tuple[torch.dtype, ...] | None = None


@dataclass
class Row:
    case: str
    name: str
    bytes_per_param: float
    numel: int
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ms(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _lion_state(dtype: torch.dtype) -> int:
    # lionkit's rows ask for a float32 momentum for bfloat16 and float16 parameters
    # (momentum_dtype=torch.float32; the default is the parameter's dtype), as the kernel-only row keeps.
    return 4 if dtype in (torch.bfloat16, torch.float16) else _size(dtype)


class _KernelOnly:
    """``lion_kernels.triton_lion.lion_`` without an optimizer around it: the floor for ``Lion(fused=True)``."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.exp_avgs = [torch.zeros_like(p, dtype=torch.float32) for p in params]

    def step(self) -> None:
        triton_lion.lion_(
            self.params, [p.grad for p in self.params], self.exp_avgs, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
            weight_decay=WEIGHT_DECAY, max_lr=None, cautious=False, maximize=False,
        )


def _methods() -> list[Method]:
    hyper = dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    own = lambda dtype: _size(dtype)  # noqa: E731 - state in the parameter's dtype
    methods = [
        Method("lionkit triton_lion.lion_ (kernel only)", lambda ps: _KernelOnly(ps).step, _lion_state)
    ]
    try:
        from lion_torch import Lion

        wide = dict(momentum_dtype=torch.float32)  # what _lion_state counts for low-precision parameters
        methods.append(Method(FUSED, lambda ps: Lion(ps, **hyper, **wide, fused=True).step, _lion_state))
        methods.append(
            Method("lionkit Lion(foreach=True)",
                   lambda ps: Lion(ps, **hyper, **wide, foreach=True, fused=False).step, _lion_state)
        )
        methods.append(
            Method(FUSED_INT8, lambda ps: Lion(ps, **hyper, momentum_dtype="int8", fused=True).step,
                   _int8_state, dtypes=(torch.float32, torch.bfloat16))
        )
        methods.append(
            Method(FUSED_INT8_SR,
                   lambda ps: Lion(ps, **hyper, momentum_dtype="int8", stochastic_rounding=True, seed=0,
                                   fused=True).step,
                   _int8_state, dtypes=(torch.bfloat16,))
        )
    except ImportError as error:
        print(f"lion_torch unavailable ({error}): only the kernel row is lionkit's", file=sys.stderr)
    methods.append(
        Method(ADAMW, lambda ps: torch.optim.AdamW(ps, **hyper, fused=True).step, lambda d: 2 * _size(d))
    )
    try:
        import lion_pytorch

        methods.append(
            Method(LION_PYTORCH, lambda ps: lion_pytorch.Lion(ps, **hyper, use_triton=True).step, own, True)
        )
    except ImportError:
        print("lion-pytorch not installed: its row is left out", file=sys.stderr)
    try:
        import optimi

        # kahan_sum=False: the same algorithm for bfloat16 (optimi's default adds a compensation buffer).
        methods.append(
            Method("torch-optimi Lion(triton=True)",
                   lambda ps: optimi.Lion(ps, **hyper, triton=True, kahan_sum=False).step, own, True)
        )
    except ImportError:
        print("torch-optimi not installed: its row is left out", file=sys.stderr)
    try:
        import bitsandbytes

        methods.append(
            Method("bitsandbytes Lion8bit", lambda ps: bitsandbytes.optim.Lion8bit(ps, **hyper).step,
                   _int8_state, True, dtypes=(torch.float32, torch.bfloat16))
        )
    except ImportError:
        print("bitsandbytes not installed: its Lion8bit row is left out", file=sys.stderr)
    return methods


class _Timer:
    """CUDA events on a GPU; ``time.perf_counter`` in a smoke run on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time_ms(self, fn: Callable[[], Any]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def _copy_bandwidth(device: torch.device, timer: _Timer, nbytes: int, repeats: int) -> float:
    """GB/s of ``dst.copy_(src)``: bytes read plus bytes written over the median time."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(timer.time_ms(lambda: dst.copy_(src)) for _ in range(repeats))
    del src, dst
    return 2 * nbytes / ms / 1e6


def _run_case(case: str, methods: list[Method], args: argparse.Namespace, device: torch.device) -> list[Row]:
    total, count, dtype = CASES[case]
    total = max(count, int(total * args.scale))
    size = total // count
    torch.manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(size, device=device) * 0.02).to(dtype)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, device=device).to(dtype)
    numel = size * count
    timer = _Timer(device)
    rows: list[Row] = []
    steps: list[Callable[[], Any] | None] = []
    for method in methods:
        if method.dtypes is not None and dtype not in method.dtypes:
            continue
        bytes_per_param = 3 * _size(dtype) + 2 * method.state_bytes(dtype)  # p read+write, g read, state
        row = Row(CASE_TITLES[case], method.name, bytes_per_param, numel)
        rows.append(row)
        if method.needs_cuda and device.type != "cuda":
            row.error = "needs CUDA"
            steps.append(None)
            continue
        try:
            step = method.build(params)
            for _ in range(args.warmup):  # creates the state, compiles, autotunes
                step()
            steps.append(step)
        except Exception as error:  # one broken peer must not end the run
            row.error = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            traceback.print_exc(file=sys.stderr)
            steps.append(None)
    gc.collect()
    for _ in range(args.repeats):
        for i, (step, row) in enumerate(zip(steps, rows)):
            if step is None:
                continue
            try:
                row.samples.append(timer.time_ms(step))
            except Exception as error:
                row.error = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                row.samples.clear()
                steps[i] = None
    del params, steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _table(rows: list[Row], copy_gbs: float) -> str:
    adamw = {row.case: row.ms for row in rows if row.name == ADAMW and row.samples}
    lines = [
        "| case | implementation | ms/step (median) | min ms | B/param | GB/s | of copy | vs AdamW fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.samples:
            reason = row.error or "no samples"
            lines.append(f"| {row.case} | {row.name} | {reason} | | {row.bytes_per_param:.4g} | | | |")
            continue
        gbs = row.bytes_per_param * row.numel / row.ms / 1e6
        ratio = row.ms / adamw[row.case] if row.case in adamw else float("nan")
        lines.append(
            f"| {row.case} | {row.name} | {row.ms:.3f} | {min(row.samples):.3f} | "
            f"{row.bytes_per_param:.4g} | {gbs:.0f} | {gbs / copy_gbs:.0%} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def _goals(rows: list[Row], copy_gbs: float) -> list[str]:
    def find(case: str, name: str) -> Row | None:
        for row in rows:
            if row.case == CASE_TITLES[case] and row.name == name and row.samples:
                return row
        return None

    lines = []
    fused_a, adamw_a = find("a", FUSED), find("a", ADAMW)
    if fused_a is not None:
        fraction = fused_a.bytes_per_param * fused_a.numel / fused_a.ms / 1e6 / copy_gbs
        lines.append(f"(a) fused at {fraction:.0%} of copy bandwidth (goal >= 85%): "
                     f"{'met' if fraction >= 0.85 else 'NOT met'}")
        if adamw_a is not None:
            ratio = fused_a.ms / adamw_a.ms
            lines.append(f"(a) fused {ratio:.2f}x AdamW fused time (goal <= 0.75x): "
                         f"{'met' if ratio <= 0.75 else 'NOT met'}")
    int8_a, int8_sr_c = find("a", FUSED_INT8), find("c", FUSED_INT8_SR)
    if fused_a is not None:
        for label, row, goal in (("(a) int8 momentum", int8_a, 0.85), ("(c) bf16 + int8", int8_sr_c, 0.5)):
            if row is not None:
                ratio = row.ms / fused_a.ms
                lines.append(f"{label} step {ratio:.2f}x the (a) float32 fused step (goal <= {goal}x): "
                             f"{'met' if ratio <= goal else 'NOT met'}")
    fused_b, peer_b = find("b", FUSED), find("b", LION_PYTORCH)
    if fused_b is not None and peer_b is not None:
        speedup = peer_b.ms / fused_b.ms
        lines.append(f"(b) fused {speedup:.1f}x faster than lion-pytorch Triton (goal >= 3x): "
                     f"{'met' if speedup >= 3 else 'NOT met'}")
    return lines


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _header(device: torch.device, copy_gbs: float, copy_bytes: int, args: argparse.Namespace) -> list[str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        cuda = torch.version.cuda
    else:
        name, cuda = f"CPU ({platform.processor() or platform.machine()})", "none"
    versions = ", ".join(
        f"{pkg} {_version(pkg)}"
        for pkg in ("torch", "triton", "lion-pytorch", "torch-optimi", "bitsandbytes")
    )
    lines = [
        f"Device: {name}; CUDA {cuda}; {versions}; Python {platform.python_version()}.",
        f"Date: {datetime.date.today().isoformat()}. Command: `{' '.join(sys.argv)}`.",
        f"Measured copy bandwidth (dst.copy_(src), {copy_bytes / 2**30:g} GiB buffers): {copy_gbs:.0f} GB/s.",
        f"Launch configuration: BLOCK={triton_lion.BLOCK}, CHUNK={triton_lion.CHUNK}, "
        f"num_warps={triton_lion.NUM_WARPS}; median of {args.repeats} steps after {args.warmup} "
        f"warm-up steps; parameter scale {args.scale}.",
    ]
    if args.smoke:
        lines.insert(0, "**SMOKE RUN on the CPU: these numbers measure nothing; they check the script.**")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each case's parameters")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--smoke", action="store_true",
        help="run on the CPU at 1/20000 scale (needs TRITON_INTERPRET=1): checks the script only",
    )
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--smoke runs the kernel in the Triton interpreter: set TRITON_INTERPRET=1")
        device = torch.device("cpu")
        args.scale = min(args.scale, 1 / 20_000)
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
        copy_bytes = 1 << 24
    else:
        if not torch.cuda.is_available():
            print("No CUDA device: nothing to measure. Run this on a GPU (or --smoke to check the script).",
                  file=sys.stderr)
            return 2
        reason = triton_lion.unavailable_reason()
        if reason is not None:
            print(f"The Triton kernel cannot run: {reason}", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        copy_bytes = COPY_BYTES
    timer = _Timer(device)
    copy_gbs = _copy_bandwidth(device, timer, copy_bytes, max(args.repeats, 5))
    methods = _methods()
    rows: list[Row] = []
    for case in cases:
        print(f"== {CASE_TITLES[case]}", file=sys.stderr)
        rows.extend(_run_case(case, methods, args, device))
    goals = ["goals not evaluated in a smoke run"] if args.smoke else _goals(rows, copy_gbs)
    report = "\n".join(
        ["# Lion step on CUDA: lionkit's fused Triton kernel and the alternatives", "",
         *[f"{line}  " for line in _header(device, copy_gbs, copy_bytes, args)], "",
         _table(rows, copy_gbs), "", *[f"- {line}" for line in goals], ""]
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
