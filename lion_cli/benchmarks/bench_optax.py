"""Times a jitted Optax step on the CPU: ``lion_optax.lion`` against ``optax.lion`` and ``optax.adamw``.

40M float32 parameters in 10 leaves (bandwidth-bound). Each row is the usual step,
``jax.jit(step, donate_argnums=(0, 1))`` with ``step = update + optax.apply_updates``, compiled
twice: with XLA's default options, and with ``xla_cpu_copy_insertion_use_region_analysis=True``
passed as ``compiler_options`` to that one ``jax.jit`` (the remedy documented in
docs/benchmarks-optax.md). For each row the compiled HLO is inspected: loop fusions and ``copy``
instructions per leaf, and the page faults one step takes (temporary buffers are allocated per
execution, so a temporary copy is paid in fresh pages every step).

A Lion step must read p, g, m and write p, m: 20 bytes per float32 parameter (AdamW: 28). The
roofline is an in-place ``x + y`` on two donated flat float32 buffers of 5N/3 elements, which moves
the 20N bytes of a Lion step. Rows take turns, one step each per round, so load from other
processes spreads over all rows. Reported: the median (and the minimum) of ``--repeats`` timed steps
after ``--warmup`` untimed ones, and GB/s at the row's bytes per parameter. The Lion rows run the
same gradients from the same parameters for the same number of steps (the prototype row too), and
the script asserts that their parameters and momenta end bit-identical.

A prototype that was not adopted (see the docs) runs as one more row, to reproduce its figure.

Usage:
  python benchmarks/bench_optax.py            # the figures in docs/benchmarks-optax.md
  python benchmarks/bench_optax.py --quick    # a smoke run on a tenth of the parameters

``--quick`` only checks that everything runs: its temporaries are small enough (under glibc's 32 MB
mmap ceiling) for malloc to recycle them between steps, so whether a row pays page faults depends
on the rows before it, and its default-options timings say little.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lion_optax  # noqa: E402

LR, WEIGHT_DECAY = 1e-4, 1e-3
REGION_ANALYSIS = {"xla_cpu_copy_insertion_use_region_analysis": True}
FUSION = re.compile(r"^\s*\S+ = \S+ fusion\(", re.MULTILINE)
COPY = re.compile(r"^\s*\S+ = \S+ copy\(", re.MULTILINE)


class Row:
    """One timed configuration: a jitted, donating step and the state it carries between calls."""

    def __init__(self, name: str, run: Callable[[Any], Any], carry: Any, bytes_per_param: int, hlo: str):
        self.name, self.run, self.carry, self.bytes_per_param = name, run, carry, bytes_per_param
        self.fusions = len(FUSION.findall(hlo))
        self.copies = len(COPY.findall(hlo))
        self.times: list[float] = []
        self.faults: list[int] = []

    def step(self, timed: bool) -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        self.carry = jax.block_until_ready(self.run(self.carry))
        if timed:
            self.times.append(time.perf_counter() - start)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def _optimizer_row(name: str, tx: optax.GradientTransformation, params: Any, grads: Any,
                   options: dict[str, Any] | None, bytes_per_param: int) -> Row:
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    jitted = jax.jit(step, donate_argnums=(0, 1), compiler_options=options)
    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    hlo = jitted.lower(p, s, grads).compile().as_text()
    return Row(name, lambda carry: jitted(*carry, grads), (p, s), bytes_per_param, hlo)


def _prototype_bf16_direction(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """The rejected alternative of docs/benchmarks-optax.md, kept to reproduce its figure.

    The direction is materialised as bfloat16 (exact for -1, 0, 1 and NaN; XLA:CPU will not
    duplicate an f32-to-bf16 convert into its two consumers), and the momentum write is tied to it
    by OR-ing in ``bits(u) >> 16``, which is always zero, so the write is ordered after the read of
    the old momentum and XLA needs no copy. Bit-identical to ``optax.lion``; not part of lion_optax.
    """
    b1, b2 = 0.9, 0.99

    def leaf(g: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = (1 - b1) * g + b1 * m
        u = (jnp.sign(c) + (c - c)).astype(jnp.bfloat16)
        zero = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(u, jnp.uint16), jnp.uint16(16))
        bits = jax.lax.bitcast_convert_type((1 - b2) * g + b2 * m, jnp.uint32) | zero.astype(jnp.uint32)
        return u.astype(jnp.float32), jax.lax.bitcast_convert_type(bits, jnp.float32)

    def init(params: Any) -> optax.ScaleByLionState:
        return optax.ScaleByLionState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates: Any, state: optax.ScaleByLionState, params: Any = None) -> tuple[Any, Any]:
        pairs = jax.tree.map(leaf, updates, state.mu)
        directions = jax.tree.map(lambda _, pair: pair[0], updates, pairs)
        mu = jax.tree.map(lambda _, pair: pair[1], updates, pairs)
        return directions, optax.ScaleByLionState(optax.safe_increment(state.count), mu)

    return optax.chain(
        optax.GradientTransformation(init, update),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def _roofline_row(total: int, options: dict[str, Any] | None, name: str) -> Row:
    elements = -(-5 * total // 3)
    x = jax.random.normal(jax.random.key(7), (elements,), jnp.float32)
    y = jax.random.normal(jax.random.key(8), (elements,), jnp.float32)
    jitted = jax.jit(lambda x, y: x + y, donate_argnums=0, compiler_options=options)
    hlo = jitted.lower(x, y).compile().as_text()
    return Row(name, lambda x: jitted(x, y), x, 20, hlo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=40_000_000)
    parser.add_argument("--leaves", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a tenth of the parameters, 5 repeats")
    args = parser.parse_args()
    if args.quick:
        args.params, args.repeats = args.params // 10, 5

    per_leaf = args.params // args.leaves
    keys = jax.random.split(jax.random.key(0), 2 * args.leaves)
    params = {f"w{i}": jax.random.normal(keys[i], (per_leaf,), jnp.float32) for i in range(args.leaves)}
    grads = {f"w{i}": jax.random.normal(keys[args.leaves + i], (per_leaf,), jnp.float32)
             for i in range(args.leaves)}
    total = per_leaf * args.leaves

    rows: list[Row] = []
    for label, options in (("default", None), ("region analysis", REGION_ANALYSIS)):
        rows += [
            _optimizer_row(f"optax.lion [{label}]", optax.lion(LR, weight_decay=WEIGHT_DECAY),
                           params, grads, options, 20),
            _optimizer_row(f"lion_optax.lion [{label}]", lion_optax.lion(LR, weight_decay=WEIGHT_DECAY),
                           params, grads, options, 20),
            _optimizer_row(f"optax.adamw [{label}]", optax.adamw(LR, weight_decay=WEIGHT_DECAY),
                           params, grads, options, 28),
            _roofline_row(total, options, f"roofline x+y [{label}]"),
        ]
    rows.insert(3, _optimizer_row("prototype bf16 direction, not adopted [default]",
                                  _prototype_bf16_direction(LR, WEIGHT_DECAY), params, grads, None, 20))

    for _ in range(args.warmup):
        for row in rows:
            row.step(timed=False)
    for _ in range(args.repeats):
        for row in rows:
            row.step(timed=True)

    # Same start, same gradients, same number of steps: every Lion row must hold the same numbers.
    lion_rows = [row for row in rows if not row.name.startswith(("optax.adamw", "roofline"))]
    first = jax.tree.leaves(lion_rows[0].carry)
    for row in lion_rows[1:]:
        for a, b in zip(first, jax.tree.leaves(row.carry)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=row.name)

    machine = platform.processor() or platform.machine()
    print(f"# bench_optax: {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, optax {optax.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"# {total:,} float32 parameters in {args.leaves} leaves; {args.repeats} timed steps after "
          f"{args.warmup} warm-up steps; Lion rows bit-identical: yes")
    print()
    print("| step (compile options) | ms/step median | min | GB/s | bytes/param | fusions/leaf | copies/leaf "
          "| page faults/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        median = statistics.median(row.times)
        leaves = 1 if row.name.startswith("roofline") else args.leaves
        gbps = row.bytes_per_param * total / median / 1e9
        print(f"| {row.name} | {1e3 * median:.1f} | {1e3 * min(row.times):.1f} | {gbps:.1f} | "
              f"{row.bytes_per_param} | {row.fusions / leaves:.1f} | {row.copies / leaves:.1f} | "
              f"{statistics.median(row.faults):.0f} |")
    by_name = {row.name: statistics.median(row.times) for row in rows}
    print()
    for label in ("default", "region analysis"):
        ratio = by_name[f"optax.lion [{label}]"] / by_name[f"lion_optax.lion [{label}]"]
        print(f"speedup of lion_optax.lion over optax.lion [{label}]: {ratio:.2f}x")
    ratio = by_name["optax.lion [default]"] / by_name["lion_optax.lion [region analysis]"]
    print(f"speedup of lion_optax.lion [region analysis] over optax.lion [default]: {ratio:.2f}x")


if __name__ == "__main__":
    main()
