"""Runs ``lion_torch.Lion`` on given parameters and gradients, in this process or in a fresh one.

The Keras tests compare ``lion_keras.Lion`` with ``lion_torch.Lion`` on every Keras backend. Once
TensorFlow is loaded (always on its backend, and on others when Keras has imported it for a
utility) that cannot happen in one process: TensorFlow and Triton (which ``torch.optim`` imports
through ``torch._dynamo``) each carry LLVM, and loading Triton second aborts the process with
"LLVM ERROR: inconsistency in registered CommandLine options" (loading it first works). Then ``run``
starts ``python -m tests.keras._lion_torch_run`` with the inputs in an ``.npz`` file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_here(params: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]], **kwargs: Any):
    """``len(grads)`` steps of ``lion_torch.Lion(params, **kwargs)``; returns (params, exp_avg)."""
    import torch

    import lion_torch

    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = lion_torch.Lion(tensors, **kwargs)
    for step_grads in grads:
        for t, g in zip(tensors, step_grads):
            t.grad = torch.tensor(g)
        optimizer.step()
    return [t.detach().numpy() for t in tensors], [optimizer.state[t]["exp_avg"].numpy() for t in tensors]


def run(
    params: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]], *, subprocess_: bool, **kwargs: Any
):
    """``run_here``, in a separate Python process when ``subprocess_`` is true."""
    if not subprocess_:
        return run_here(params, grads, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"p{i}": p for i, p in enumerate(params)}
        arrays.update({f"g{s}_{i}": g for s, step in enumerate(grads) for i, g in enumerate(step)})
        np.savez(Path(tmp) / "in.npz", **arrays)
        spec = {"n_params": len(params), "steps": len(grads), "kwargs": kwargs}
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        subprocess.run(
            [sys.executable, "-m", "tests.keras._lion_torch_run", tmp, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            check=True,
        )
        out = np.load(Path(tmp) / "out.npz")
        n = len(params)
        return [out[f"p{i}"] for i in range(n)], [out[f"m{i}"] for i in range(n)]


def _main(tmp: str, spec_json: str) -> None:
    spec = json.loads(spec_json)
    arrays = np.load(Path(tmp) / "in.npz")
    n = spec["n_params"]
    params = [arrays[f"p{i}"] for i in range(n)]
    grads = [[arrays[f"g{s}_{i}"] for i in range(n)] for s in range(spec["steps"])]
    kwargs = spec["kwargs"]
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    new_params, momenta = run_here(params, grads, **kwargs)
    np.savez(
        Path(tmp) / "out.npz",
        **{f"p{i}": p for i, p in enumerate(new_params)},
        **{f"m{i}": m for i, m in enumerate(momenta)},
    )


if __name__ == "__main__":
    _main(*sys.argv[1:])
