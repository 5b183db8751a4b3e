"""Optimizer-state memory of ``lion_optax`` per parameter, read from the optimizer's own state.

A transformer-shaped pytree (19.7M parameters in 12 leaves, with odd sizes) is initialised
with ``jax.eval_shape(tx.init, params)``, so nothing is allocated, and the bytes of every array in
the state (counters and seeds included) are divided by the number of parameters. The goals of
issue 12: float32 momentum 4 bytes per parameter, bfloat16 2, int8 at most 1.03. For each row the
jitted step (update, then ``optax.apply_updates``, or ``lion_optax.apply_updates_stochastic`` for
bfloat16 parameters with stochastic rounding; parameters and state donated) is compiled and XLA's
``memory_analysis()`` reports its temporary buffers, also per parameter, with XLA's default
options and with ``xla_cpu_copy_insertion_use_region_analysis`` (docs/benchmarks-optax.md).

Usage: ``python benchmarks/bench_memory_optax.py``. The figures are in docs/low-memory.md.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax

import lion_optax

SHAPES = {
    "embed": (8192, 768), "attn_qkv": (768, 2304), "attn_out": (768, 768), "mlp_in": (768, 3072),
    "mlp_out": (3072, 768), "ln1": (768,), "ln2": (768,), "qkv_bias": (2304,), "mlp_bias": (3073,),
    "head": (768, 8191), "scalar": (), "odd": (257, 3),
}


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def measure(name: str, tx, param_dtype, stochastic: bool = False) -> tuple[str, float, float, float]:
    params = {k: jax.ShapeDtypeStruct(s, param_dtype) for k, s in SHAPES.items()}
    n = sum(math.prod(s) for s in SHAPES.values())
    state = jax.eval_shape(tx.init, params)

    def step(p, s, g):
        count = optax.tree_utils.tree_get(s, "count") if stochastic else None
        updates, s = tx.update(g, s, p)
        if stochastic:
            return lion_optax.apply_updates_stochastic(p, updates, seed=0, step=count), s
        return optax.apply_updates(p, updates), s

    temps = []
    for options in (None, {"xla_cpu_copy_insertion_use_region_analysis": True}):
        jitted = jax.jit(step, donate_argnums=(0, 1), compiler_options=options)
        analysis = jitted.lower(params, state, params).compile().memory_analysis()
        temps.append(float("nan") if analysis is None else analysis.temp_size_in_bytes / n)
    return name, _bytes(state) / n, *temps


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help; no options
    rows = [
        measure("float32 params, float32 momentum", lion_optax.lion(1e-4), jnp.float32),
        measure("bfloat16 params, bfloat16 momentum (default)", lion_optax.lion(1e-4), jnp.bfloat16),
        measure("float32 params, mu_dtype=bfloat16", lion_optax.lion(1e-4, mu_dtype=jnp.bfloat16), jnp.float32),
        measure("float32 params, mu_dtype='int8'", lion_optax.lion(1e-4, mu_dtype="int8"), jnp.float32),
        measure("bfloat16 params (stochastic rounding), mu_dtype='int8'", lion_optax.lion(1e-4, mu_dtype="int8"),
                jnp.bfloat16, stochastic=True),
        measure("optax.adamw, float32 (for comparison)", optax.adamw(1e-4), jnp.float32),
    ]
    n = sum(math.prod(s) for s in SHAPES.values())
    print(f"{n:,} parameters in {len(SHAPES)} leaves; jax {jax.__version__}, optax {optax.__version__}, "
          f"{jax.default_backend()}")
    print("| optimizer | state bytes / param | step temporaries, bytes / param [default] | [region analysis] |")
    print("|---|---:|---:|---:|")
    for name, state, temp, region in rows:
        print(f"| {name} | {state:.4f} | {temp:.4f} | {region:.4f} |")


if __name__ == "__main__":
    main()
