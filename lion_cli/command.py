"""The ``lion`` command: ``lion demo`` trains a small model with Lion and AdamW, ``lion bench`` times steps.

``lion demo`` trains the same multilayer perceptron on scikit-learn's digits (the data ships inside
scikit-learn: nothing is downloaded) with Lion and with AdamW, on every installed backend (PyTorch,
Keras 3, JAX/Optax); it prints a table of final loss, test accuracy and time, and writes a PNG of the
loss curves. ``lion bench`` runs the step-time benchmarks shipped in :mod:`lion_cli.benchmarks`,
prints their markdown tables together and plots the step times.

This module imports no framework when it is imported: each backend is imported when the command
reaches it, so ``lion demo --backend torch`` works without Keras or JAX. Nothing in ``lion_core`` or
the adapters imports ``lion_cli``.

Example:
  From a shell::

      lion demo --backend torch --epochs 5 --out results
      lion bench --only torch-cpu --quick

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _bench, _demo
from ._common import CommandError
from .recipe import DEMO_EPOCHS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``lion`` argument parser (``lion demo``, ``lion bench``)."""
    parser = argparse.ArgumentParser(
        prog="lion",
        description="Lion optimizer tools: a training demo against AdamW, and step-time benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

    demo = commands.add_parser(
        "demo", help="train an MLP on scikit-learn digits with Lion and AdamW on each installed backend",
        description="Trains the same MLP on scikit-learn's digits with Lion and with AdamW (Lion's lr and "
        "weight decay from lion_core.from_adamw), prints final loss, test accuracy and time, and writes "
        "lion-demo.png (loss curves) and lion-demo.md (the table) to --out.",
    )
    demo.add_argument("--backend", choices=[*_demo.BACKENDS, "all"], default="all",
                      help="which framework to train with (default: all installed ones)")
    demo.add_argument("--epochs", type=_positive_int, default=DEMO_EPOCHS,
                      help=f"epochs per run (default: {DEMO_EPOCHS})")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the initial weights and batch order (default: 0)")
    demo.add_argument("--out", default="lion-demo",
                      help="folder for lion-demo.png and lion-demo.md, created if needed "
                      "(default: lion-demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo.run)

    bench = commands.add_parser(
        "bench", help="run the step-time benchmarks installed with lionkit (ours vs the peers)",
        description="Runs the benchmark scripts of lion_cli.benchmarks (ours vs the peers, one process "
        "each), prints their markdown tables and writes lion-bench.md and lion-bench.png (step times) to "
        "--out. Benchmarks whose framework or device is missing are skipped with the reason.",
    )
    bench.add_argument("--only", action="append", choices=list(_bench.BENCHMARKS), metavar="NAME",
                       help=f"run only this benchmark (repeatable): {', '.join(_bench.BENCHMARKS)}")
    bench.add_argument("--quick", action="store_true",
                       help="a short smoke run of each script (smaller or fewer steps); figures are rough")
    bench.add_argument("--benchmarks", metavar="DIR",
                       help="run same-named scripts from this folder instead of the installed ones")
    bench.add_argument("--out", default="lion-bench",
                       help="folder for lion-bench.md and lion-bench.png, created if needed "
                       "(default: lion-bench)")
    bench.add_argument("script_args", nargs=argparse.REMAINDER,
                       help="after --, arguments passed to every benchmark script")
    bench.set_defaults(run=_bench.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``lion`` command; returns its exit status (2: bad arguments, 1: an error, 0: done)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    if getattr(args, "script_args", None) and args.script_args[0] == "--":
        args.script_args = args.script_args[1:]
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"lion {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
