"""The sharding check, runnable alone: ``python -m tests.optax._sharding_check`` (needs 8 devices).

Parameters sharded over a 4x2 mesh of host devices must give momenta with the same shardings, and
the compiled training step must contain no collective; with ``cautious=True`` the per-array mean
needs one (an all-reduce), which is checked too so that the documentation's claim stays true.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import lion_optax  # noqa: E402
from lion_core.reference import reference_lion  # noqa: E402
from tests.support import assert_close  # noqa: E402

COLLECTIVES = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(-start)?\(")
DEVICES = 8


def check() -> None:
    assert jax.device_count() >= DEVICES, f"needs {DEVICES} devices, has {jax.device_count()}"
    mesh = Mesh(np.array(jax.devices()[:DEVICES]).reshape(4, 2), ("data", "model"))
    specs = {"w": PartitionSpec("data", "model"), "b": PartitionSpec("model"), "scale": PartitionSpec()}
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((16, 6)), "b": rng.standard_normal(6), "scale": rng.standard_normal(())}
    host = {k: v.astype(np.float32) for k, v in host.items()}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()} for _ in range(3)]
    put = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

    for cautious in (False, True):
        mask = {"w": True, "b": False, "scale": True}
        tx = lion_optax.lion(1e-2, weight_decay=0.1, mask=mask, cautious=cautious)
        params = put(host)
        state = tx.init(params)
        mu = optax.tree_utils.tree_get(state, "mu")
        for k, m in mu.items():
            assert m.sharding.is_equivalent_to(params[k].sharding, m.ndim), (k, m.sharding)

        def step(p, s, g):
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        jitted = jax.jit(step, donate_argnums=(0, 1))
        hlo = jitted.lower(params, state, put(grads[0])).compile().as_text()
        found = sorted({m.group(1) for m in COLLECTIVES.finditer(hlo)})
        if cautious:
            assert found == ["all-reduce"], found
        else:
            assert found == [], f"collectives in the compiled update: {found}"
        for g in grads:
            params, state = jitted(params, state, put(g))
        for k, m in optax.tree_utils.tree_get(state, "mu").items():
            assert m.sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), m.ndim), (k, m.sharding)
            assert params[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), m.ndim)
        for k in host:
            ref = reference_lion([host[k]], [[g[k]] for g in grads], lr=1e-2,
                                 weight_decay=0.0 if k == "b" else 0.1, cautious=cautious)
            assert_close(params[k], ref.params[0], rtol=1e-6, atol=1e-6, what=f"{k} (cautious={cautious})")


if __name__ == "__main__":
    check()
    print("sharding check passed")
