"""``lion demo``'s training loops, one module per framework.

:mod:`lion_cli.demos.torch` (``lion_torch.Lion`` vs ``torch.optim.AdamW``), :mod:`lion_cli.demos.keras`
(``lion_keras.Lion`` vs ``keras.optimizers.AdamW``) and :mod:`lion_cli.demos.jax` (``lion_optax.lion``
vs ``optax.adamw``) each provide ``run_recipe(optimizer, *, epochs, seed, on_epoch) -> History`` and
train the recipe of :mod:`lion_cli.recipe`. Each imports its framework at import time, so this package
imports none of them: ``lion demo`` imports a module when it reaches that backend.
"""
