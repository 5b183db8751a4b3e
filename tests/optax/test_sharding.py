"""Sharded parameters keep their sharding in the momentum, and the update needs no collective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax

from tests.optax import _sharding_check

ROOT = Path(__file__).resolve().parents[2]


def test_sharded_params_give_sharded_momentum_and_no_collectives():
    if jax.device_count() >= _sharding_check.DEVICES:
        _sharding_check.check()
        return
    # JAX's backend started before conftest could ask for 8 host devices: rerun in a fresh process.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "tests.optax._sharding_check"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
