"""Bytes on the wire and training quality of ``lion_torch.DistributedLion`` against a gradient all-reduce.

Part 1, bytes: for 2, 4 and 8 gloo ranks on loopback, each rank takes one ``DistributedLion`` step
of the demo's MLP and all-reduces the same gradients as one flat bf16 buffer and as one flat fp32
buffer (what DDP's buckets do). The collectives are wrapped and recorded; the bytes each rank sends
and receives follow each collective's standard algorithm (ring all-reduce: ``2 (W - 1) / W`` of the
buffer each way; all-gather: ``W - 1`` input-sized chunks each way; all-to-all: every chunk but the
rank's own, each way). The recorded figures are checked against the analytic count of
``DistributedLion``'s design: ``(W - 1) (S / 8 + 1)`` bytes for the 1-bit all-to-all and
``(W - 1) (S k / 8 + 1)`` for the all-gather of the ``k``-bit voted shard, with ``S`` coordinates
per shard; both are divided by the number of parameters.

Part 2, quality: scikit-learn's digits, 4 ranks, the demo's MLP and Lion hyperparameters, the same
global batch (4 x 32) and steps for ``DistributedLion`` (majority vote) and for ``Lion`` under
``DistributedDataParallel``; the final training loss over the whole training set and the accuracy
on the demo's held-out split are compared.

Usage:
  python benchmarks/bench_distributed.py --out docs/assets   # the figures in docs/distributed.md
  python benchmarks/bench_distributed.py --quick    # fewer quality steps
Writes distributed-bench.md (the tables), distributed-bytes.png and distributed-quality.png into --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLDS = (2, 4, 8)


def _record(calls: list[tuple[str, int, int]], world: int) -> None:
    """Wraps the collectives the step and the all-reduces issue; appends (name, sent, received) bytes."""

    def wrap(name: str, cost):
        original = getattr(dist, name)

        def recorded(*args: Any, **kwargs: Any):
            calls.append((name, *cost(*args)))
            return original(*args, **kwargs)

        setattr(dist, name, recorded)

    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    wrap(
        "all_to_all_single",
        lambda out, inp, *a, **k: (nbytes(inp) * (world - 1) // world, nbytes(out) * (world - 1) // world),
    )
    for name in ("all_gather_single", "all_gather_into_tensor"):
        if hasattr(dist, name):
            wrap(
                name,
                lambda out, inp, *a, **k: (nbytes(inp) * (world - 1), nbytes(out) * (world - 1) // world),
            )
    wrap("all_reduce", lambda t, *a, **k: (2 * nbytes(t) * (world - 1) / world,) * 2)


def _model() -> torch.nn.Module:
    from lion_cli.recipe import DEMO_HIDDEN

    sizes = (64, *DEMO_HIDDEN, 10)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _bytes(rank: int, world: int) -> dict[str, Any]:
    from lion_torch import DistributedLion
    from lion_torch._distributed import vote_bits

    torch.manual_seed(0)
    model = _model()
    n = sum(p.numel() for p in model.parameters())
    opt = DistributedLion(model.parameters(), lr=1e-4)  # broadcasts before any call is recorded
    torch.manual_seed(rank)
    model(torch.randn(32, 64)).pow(2).mean().backward()
    calls: list[tuple[str, int, int]] = []
    _record(calls, world)
    opt.step()
    lion = calls[:]
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    calls.clear()
    dist.all_reduce(flat.to(torch.bfloat16))
    bf16 = calls[:]
    calls.clear()
    dist.all_reduce(flat.clone())
    fp32 = calls[:]
    shard = -(-n // (8 * world)) * 8
    analytic = (world - 1) * (shard // 8 + 1) + (world - 1) * (shard * vote_bits("majority", world) // 8 + 1)
    return {"n": n, "lion": lion, "bf16": bf16, "fp32": fp32, "analytic": analytic}


def _quality(rank: int, world: int, steps: int) -> dict[str, list[float]]:
    import numpy as np
    from torch.nn.parallel import DistributedDataParallel

    from lion_cli.recipe import demo_data, demo_init, demo_settings
    from lion_torch import DistributedLion, Lion

    data = demo_data()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    settings = demo_settings("lion")
    per_rank = 32
    curves: dict[str, list[float]] = {}
    for name in ("Lion + DDP", "DistributedLion (majority)", "DistributedLion (average)"):
        model = _model()
        with torch.no_grad():  # the demo's initial weights, the same on every rank
            for layer, (kernel, bias) in zip(
                [m for m in model if isinstance(m, torch.nn.Linear)], demo_init(0)
            ):
                layer.weight.copy_(torch.from_numpy(kernel.T))
                layer.bias.copy_(torch.from_numpy(bias))
        hyper = {"lr": settings["lr"], "betas": settings["betas"], "weight_decay": settings["weight_decay"]}
        if name == "Lion + DDP":
            net: torch.nn.Module = DistributedDataParallel(model)
            opt: torch.optim.Optimizer = Lion(model.parameters(), **hyper)
        else:
            net = model
            opt = DistributedLion(
                model.parameters(), **hyper, vote="average" if "average" in name else "majority"
            )
        curve = []
        for step in range(steps):
            order = np.random.default_rng([0, step]).choice(len(x), per_rank * world, replace=False)
            rows = torch.from_numpy(order[rank * per_rank : (rank + 1) * per_rank])
            torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
            opt.zero_grad()
            if step % 10 == 9 or step == steps - 1:
                with torch.no_grad():
                    curve.append(float(torch.nn.functional.cross_entropy(model(x), y)))
        with torch.no_grad():
            test = model(torch.from_numpy(data.x_test)).argmax(dim=1)
        accuracy = float((test == torch.from_numpy(data.y_test)).float().mean())
        curves[name] = curve + [accuracy]  # the last entry: test accuracy
    return curves


def _worker(rank: int, world: int, folder: str, task: str, args: tuple[Any, ...], out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(folder) / "store"), world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600)
    )
    try:
        result = {"bytes": _bytes, "quality": _quality}[task](rank, world, *args)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(result, out)


def _run(task: str, world: int, *args: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="lionkit-bench-") as folder:
        out = str(Path(folder) / "result.pt")
        mp.spawn(_worker, args=(world, folder, task, args, out), nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 quality steps instead of 300")
    parser.add_argument("--out", type=Path, default=Path("lion-bench"),
                        help="folder for the tables and plots (default: lion-bench; the docs use docs/assets)")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)

    import matplotlib.pyplot as plt

    rows = []
    report = [
        "| ranks | DistributedLion sends / receives (bytes per parameter) | bf16 all-reduce "
        "| fp32 all-reduce "
        "| DistributedLion / bf16 |",
        "|---|---|---|---|---|",
    ]
    for world in WORLDS:
        r = _run("bytes", world)
        n = r["n"]
        sent = sum(c[1] for c in r["lion"]) / n
        received = sum(c[2] for c in r["lion"]) / n
        assert sum(c[1] for c in r["lion"]) == r["analytic"], (r["lion"], r["analytic"])
        assert sum(c[2] for c in r["lion"]) == r["analytic"], (r["lion"], r["analytic"])
        bf16 = sum(c[1] for c in r["bf16"]) / n
        fp32 = sum(c[1] for c in r["fp32"]) / n
        rows.append((world, sent, received, bf16, fp32))
        report.append(
            f"| {world} | {sent:.4f} / {received:.4f} | {bf16:.3f} | {fp32:.3f} | 1/{bf16 / sent:.1f} |"
        )
    report += [
        "",
        f"Parameters: {n}. The recorded DistributedLion bytes equal the analytic count at every "
        "world size; the all-reduce columns count what a ring all-reduce sends (and receives).",
    ]

    fig, ax = plt.subplots(figsize=(6, 3.5))
    worlds = [r[0] for r in rows]
    for label, column in (("fp32 all-reduce", 4), ("bf16 all-reduce", 3), ("DistributedLion", 1)):
        ax.plot(worlds, [r[column] for r in rows], marker="o", label=label)
    naive = [(w - 1) / 8 for w in worlds]
    ax.plot(worlds, naive, linestyle="--", marker="x", label="all-gather of 1-bit signs (naive)")
    ax.set_xlabel("ranks")
    ax.set_ylabel("bytes sent per parameter per step")
    ax.set_xticks(worlds)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Bytes each rank sends per step")
    fig.tight_layout()
    fig.savefig(options.out / "distributed-bytes.png", dpi=120)

    steps = 60 if options.quick else 300
    curves = _run("quality", 4, steps)
    accuracies = {name: curve.pop() for name, curve in curves.items()}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        xs = [min(10 * (i + 1), steps) for i in range(len(curve))]
        ax.plot(xs, curve, label=name)
    ddp = curves["Lion + DDP"][-1]
    report += [
        "",
        f"Digits, 4 ranks, global batch 4 x 32, {steps} steps: final training loss over the training set, "
        "accuracy on the held-out 20%.",
        "",
        "| optimizer | final training loss | / Lion + DDP | test accuracy |",
        "|---|---|---|---|",
    ]
    for name, curve in curves.items():
        report.append(f"| {name} | {curve[-1]:.4f} | {curve[-1] / ddp:.3f} | {accuracies[name]:.3f} |")
    ax.set_xlabel("step (global batch 4 x 32)")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("digits, 4 ranks")
    fig.tight_layout()
    fig.savefig(options.out / "distributed-quality.png", dpi=120)
    command = f"python benchmarks/bench_distributed.py --out docs/assets{' --quick' if options.quick else ''}"
    report += ["", f"Command: `{command}`."]
    text = "\n".join(report) + "\n"
    (options.out / "distributed-bench.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
