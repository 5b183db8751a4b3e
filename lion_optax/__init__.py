"""Lion for JAX and Optax: ``scale_by_lion`` and ``lion``, on the ``lion_core`` rule.

``lion_optax.lion`` takes ``optax.lion``'s arguments, with the same defaults, and returns the same
numbers for float32 parameters, so swapping the import is enough. It adds keyword-only variants
(``cautious``, ``decouple_lr``/``max_lr``); the momentum and the updates keep optax's dtypes.

Example (README-ready; ``tests/optax/test_example.py`` runs it):

  >>> import jax, jax.numpy as jnp, optax
  >>> import lion_optax
  >>> params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  >>> x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
  >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
  >>> tx = optax.chain(optax.clip_by_global_norm(1.0),
  ...                  lion_optax.lion(optax.cosine_decay_schedule(0.02, 200)))
  >>> state = tx.init(params)
  >>> @jax.jit
  ... def step(params, state):
  ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
  ...     return optax.apply_updates(params, updates), state
  >>> for _ in range(200):
  ...     params, state = step(params, state)
  >>> float(loss(params)) < 1e-6
  True

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from ._transform import ScaleByLionInt8State, ScaleByLionState, apply_updates_stochastic, lion, scale_by_lion

__all__ = ["ScaleByLionInt8State", "ScaleByLionState", "apply_updates_stochastic", "lion", "scale_by_lion"]
