"""The step-time benchmarks that ``lion bench`` runs, one module per benchmark, each a script of its own.

Run one with ``python -m lion_cli.benchmarks.bench_torch_cpu --quick`` (or, from a source checkout,
``python benchmarks/bench_torch_cpu.py --quick``). They time ours against the peers of the ``bench``
extra (lion-pytorch, torch-optimi, pytorch_optimizer); nothing imports them but ``lion bench``.
"""
