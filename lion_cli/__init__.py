"""The ``lion`` command, the demo recipes and the benchmarks, on top of lionkit's adapters.

``lion_cli`` is the front door, apart from the optimizers: :mod:`lion_cli.command` is the ``lion``
command (also ``python -m lion_cli``), :mod:`lion_cli.recipe` the demo's shared recipe,
:mod:`lion_cli.demos` one training loop per framework, and :mod:`lion_cli.benchmarks` the step-time
benchmarks that ``lion bench`` runs. It imports the adapters (``lion_torch``, ``lion_keras``,
``lion_optax``) and their frameworks lazily, when a command reaches them; nothing imports ``lion_cli``.
"""
