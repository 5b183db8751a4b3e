"""Optimizer-state memory per parameter on PyTorch, Keras and Optax, read from each optimizer's own state.

The parameters are those of :mod:`lion_cli.benchmarks.bench_memory_optax` (a transformer-shaped set,
19.7M parameters in 12 tensors, with odd sizes and a 0-d one). For each state format the optimizer
is built on them and the bytes of every array it holds are summed and divided by the number of
parameters:

* PyTorch: one ``step()`` on zero gradients creates the state, then ``nbytes`` of every tensor in
  ``optimizer.state`` (step counters included; the seed is a Python int in the param groups);
* Keras: ``optimizer.build(variables)``, then every variable in ``optimizer.variables`` (the
  iteration counter and the learning rate included);
* Optax: ``jax.eval_shape(tx.init, params)``, every leaf of the state tree (count and seed included).

The goals of issue 12: float32 momentum 4 bytes per parameter, bfloat16 2, int8 at most 1.03. AdamW
(each framework's own) is the comparison. A format an adapter does not offer (yet) is reported as
such, with the adapter's own error. Step temporaries under XLA are measured by
``bench_memory_optax.py``.

Usage: ``python benchmarks/bench_memory.py [--frameworks torch,keras,optax]``. The figures are in
docs/low-memory.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

FRAMEWORKS = ("torch", "keras", "optax")


class Row(NamedTuple):
    """A state format: the parameters' dtype and the optimizer's options."""

    name: str
    bfloat16: bool
    momentum: str | None  # None: the host's default (the parameter's dtype)
    stochastic: bool = False
    adamw: bool = False


ROWS = (
    Row("float32 params, float32 momentum", False, None),
    Row("bfloat16 params, bfloat16 momentum (default)", True, None),
    Row("float32 params, int8 momentum", False, "int8"),
    Row("bfloat16 params (stochastic rounding), int8 momentum", True, "int8", stochastic=True),
    Row("AdamW, float32 (for comparison)", False, None, adamw=True),
)


def _shapes() -> dict[str, tuple[int, ...]]:
    from lion_cli.benchmarks.bench_memory_optax import SHAPES

    return SHAPES


def _parameter_count() -> int:
    return sum(math.prod(s) for s in _shapes().values())


def measure_torch(row: Row) -> float:
    import torch

    import lion_torch

    dtype = torch.bfloat16 if row.bfloat16 else torch.float32
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in _shapes().values()]
    if row.adamw:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=1e-4)
    else:
        options: dict[str, Any] = {} if row.momentum is None else {"momentum_dtype": row.momentum}
        if row.stochastic:
            options.update(stochastic_rounding=True, seed=0)
        optimizer = lion_torch.Lion(params, lr=1e-4, **options)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor)) / _parameter_count()


def measure_keras(row: Row) -> float:
    import keras
    import numpy as np

    import lion_keras

    dtype = "bfloat16" if row.bfloat16 else "float32"
    variables = [keras.Variable(np.zeros(s, np.float32), dtype=dtype, name=k) for k, s in _shapes().items()]
    if row.adamw:
        optimizer = keras.optimizers.AdamW(learning_rate=1e-4)
    else:
        options: dict[str, Any] = {} if row.momentum is None else {"momentum_dtype": row.momentum}
        if row.stochastic:
            options.update(stochastic_rounding=True, seed=0)
        optimizer = lion_keras.Lion(learning_rate=1e-4, **options)
    optimizer.build(variables)
    total = sum(math.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
                for v in optimizer.variables)
    return total / _parameter_count()


def measure_optax(row: Row) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    import lion_optax
    from lion_cli.benchmarks.bench_memory_optax import _bytes

    dtype = jnp.bfloat16 if row.bfloat16 else jnp.float32
    params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in _shapes().items()}
    # apply_updates_stochastic keeps no state: its seed is the caller's, its step the state's count
    tx = optax.adamw(1e-4) if row.adamw else lion_optax.lion(1e-4, mu_dtype=row.momentum)
    return _bytes(jax.eval_shape(tx.init, params)) / _parameter_count()


MEASURES: dict[str, Callable[[Row], float]] = {"torch": measure_torch, "keras": measure_keras,
                                               "optax": measure_optax}


def _version(framework: str) -> str:
    if framework == "torch":
        import torch

        return f"torch {torch.__version__}"
    if framework == "keras":
        import keras

        return f"keras {keras.__version__} ({keras.backend.backend()})"
    import jax
    import optax

    return f"jax {jax.__version__}, optax {optax.__version__}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma-separated, from torch, keras, optax (default: all three)")
    parser.add_argument("--keras-backend", default="jax", choices=("jax", "torch", "tensorflow"),
                        help="KERAS_BACKEND when it is not set (default jax)")
    args = parser.parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
        parser.error(f"--frameworks: expected names from {', '.join(FRAMEWORKS)}; "
                     f"received {args.frameworks!r}")
    os.environ.setdefault("KERAS_BACKEND", args.keras_backend)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from lion_cli._common import machine

    cells: dict[str, list[str]] = {}
    notes = []
    for framework in frameworks:
        column = []
        for row in ROWS:
            try:
                column.append(f"{MEASURES[framework](row):.4f}")
            except (TypeError, ValueError) as error:  # a format this adapter does not offer (yet)
                column.append("not available")
                notes.append(f"# {framework}, {row.name}: {type(error).__name__}: {error}")
        cells[framework] = column
    print(f"# bench_memory: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {machine()}; "
          + "; ".join(_version(f) for f in frameworks))
    print(f"# {_parameter_count():,} parameters in {len(_shapes())} tensors; "
          "bytes of optimizer state per parameter")
    print()
    print("| state format | " + " | ".join(frameworks) + " |")
    print("|---|" + "---:|" * len(frameworks))
    for i, row in enumerate(ROWS):
        print(f"| {row.name} | " + " | ".join(cells[f][i] for f in frameworks) + " |")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
