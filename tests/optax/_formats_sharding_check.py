"""The 8-bit momentum under sharding, runnable alone: ``python -m tests.optax._formats_sharding_check``.

Parameters sharded over a 4x2 mesh of host devices give int8 codes with the parameters' shardings
(after the jitted steps too, for a parameter whose last axis holds whole blocks),
and after a few jitted steps the codes and scales are bit-identical to ``lion_core.reference``'s
(``reference_lion_stored``), as are the bfloat16 parameters stored by ``apply_updates_stochastic``
to a one-device run.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import lion_core  # noqa: E402
import lion_optax  # noqa: E402
from lion_core.reference import reference_lion_stored  # noqa: E402
from tests.cases import assert_exact  # noqa: E402

DEVICES = 8


def check() -> None:
    assert jax.device_count() >= DEVICES, f"needs {DEVICES} devices, has {jax.device_count()}"
    mesh = Mesh(np.array(jax.devices()[:DEVICES]).reshape(4, 2), ("data", "model"))
    names = ("w", "b", "scale")
    specs = {"w": PartitionSpec("data", "model"), "b": PartitionSpec("model"), "scale": PartitionSpec()}
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((64, 1024)), "b": rng.standard_normal(6), "scale": rng.standard_normal(())}
    host = {k: v.astype(np.float32) for k, v in host.items()}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()} for _ in range(4)]
    put = lambda tree, dtype=None: {  # noqa: E731
        k: jax.device_put(jnp.asarray(v, dtype), NamedSharding(mesh, specs[k])) for k, v in tree.items()
    }

    tx = lion_optax.lion(1e-2, weight_decay=0.1, mu_dtype="int8", seed=11)

    def step(p, s, g):
        count = s[0].count
        updates, s = tx.update(g, s, p)
        return lion_optax.apply_updates_stochastic(p, updates, seed=11, step=count), s

    runs = {}
    for sharded in (True, False):
        params = put(host, jnp.bfloat16) if sharded else {k: jnp.asarray(v, jnp.bfloat16) for k, v in host.items()}
        state = tx.init(params)
        if sharded:
            for k in names:
                codes = state[0].mu_codes[k]
                assert codes.sharding.is_equivalent_to(params[k].sharding, codes.ndim), (k, codes.sharding)
        jitted = jax.jit(step)
        for g in grads:
            params, state = jitted(params, state, put(g) if sharded else g)
        runs[sharded] = (params, state)

    # dicts flatten in sorted key order: the tensor index of the reference follows it
    order = sorted(names)
    expected = reference_lion_stored(
        [np.asarray(jnp.asarray(host[k], jnp.bfloat16), np.float32) for k in order],
        [[g[k] for k in order] for g in grads],
        spec=lion_core.state_spec("bfloat16", "int8"),
        param_dtype="bfloat16",
        seed=11,
        lr=1e-2,
        weight_decay=0.1,
    )
    params, state = runs[True]
    for i, k in enumerate(order):
        assert_exact(state[0].mu_codes[k], expected.stored[i].codes, what=f"{k} codes")
        assert_exact(state[0].mu_scales[k], expected.stored[i].scales, what=f"{k} scales")
        assert_exact(params[k], runs[False][0][k], what=f"{k} sharded vs one device")
        assert params[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), params[k].ndim)
    # codes keep the parameter's sharding where its last axis holds whole blocks (w: 1024 = 4 x 256)
    codes = state[0].mu_codes["w"]
    assert codes.sharding.is_equivalent_to(NamedSharding(mesh, specs["w"]), codes.ndim), codes.sharding


if __name__ == "__main__":
    check()
    print("int8 sharding check passed")
