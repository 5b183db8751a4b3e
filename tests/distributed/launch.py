"""Runs a function on N local processes joined in a gloo process group, for the distributed tests.

The processes meet through a ``FileStore`` in a temporary folder (no port to pick, none to collide),
and gloo is bound to the loopback interface, so no traffic leaves the machine. Each rank's return
value comes back to the caller through ``torch.save``; an exception in any rank fails the call with
that rank's traceback.

The ranks are forked from a ``forkserver`` process that has imported torch and lionkit once: a fresh
interpreter per rank (``spawn``) imports torch every time, measured at 65 s against 4 s for three
4-rank launches on the 2-core CI machine. The server runs no torch op, so no thread pool exists to be
broken by its forks (forking the test process itself, whose OpenMP pools are running, is not safe).

Example (in a test; ``fn`` must be importable by module path, as the forkserver requires)::

    results = run_ranks(_train, world_size=2, args=(steps,))
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Seconds a collective may wait before gloo gives up: generous, so that a loaded CI machine is slow
#: rather than failing; a deadlock still ends the test.
COLLECTIVE_TIMEOUT_S = 300

#: What the forkserver imports once, before it forks the ranks.
PRELOAD = ["torch", "torch.distributed", "numpy", "lion_core", "lion_torch", "tests.distributed.launch"]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, folder: str, args: Sequence[Any]) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("LIONKIT_TEST_IFNAME", "lo")
    torch.set_num_threads(1)
    out = Path(folder) / f"rank{rank}.pt"
    try:
        store = dist.FileStore(str(Path(folder) / "store"), world_size)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
        )
        # A rank that returned at once could tear its connections down while another rank is still
        # connecting to it: every rank waits until the whole mesh is up, and again before leaving.
        dist.barrier()
        try:
            result = fn(rank, world_size, *args)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        torch.save({"ok": True, "value": result}, out)
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the rank's traceback
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
        raise


def run_ranks(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = ()) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; returns each rank's result.

    Raises:
      RuntimeError: a rank raised (its traceback is in the message) or died.
    """
    with tempfile.TemporaryDirectory(prefix="lionkit-dist-") as folder:
        try:
            multiprocessing.set_forkserver_preload(PRELOAD)  # no effect once the server runs
            mp.start_processes(_worker, args=(fn, world_size, folder, tuple(args)), nprocs=world_size,
                               join=True, start_method="forkserver")
        except Exception as error:  # a rank failed: report every rank's own traceback
            messages = []
            for rank in range(world_size):
                path = Path(folder) / f"rank{rank}.pt"
                if path.exists():
                    record = torch.load(path, weights_only=False)
                    if not record["ok"]:
                        messages.append(f"rank {rank}:\n{record['error']}")
                else:
                    messages.append(f"rank {rank}: died without a result")
            raise RuntimeError("\n".join(messages) or str(error)) from error
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False)["value"] for r in range(world_size)]
