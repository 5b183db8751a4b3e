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
global batch (4 x 32) and steps for ``Lion`` under ``DistributedDataParallel`` and for
``DistributedLion`` (majority and average vote), over 5 seeds (initial weights and batch order,
shared by the optimizers, so the comparison is paired): the training loss over the whole training
set, the loss and accuracy on the demo's held-out split, mean and standard deviation over the seeds.
Then the same learning-rate sweep (1, 2 and 3 times the demo's rate) for ``Lion + DDP`` and the
majority vote, each one's best reported: the vote's ties move a coordinate by 0, so at one learning
rate its steps are shorter on average, and comparing at a rate tuned for one side only would not be
fair to the other.

Usage:
  python benchmarks/bench_distributed.py --out docs/assets   # the figures in docs/distributed.md
  python benchmarks/bench_distributed.py --quick    # a smoke run: 2 and 4 ranks, 60 steps, 2 seeds, no sweep
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
#: Seeds of the quality runs (initial weights and batch order) and the learning-rate scales swept.
SEEDS = (0, 1, 2, 3, 4)
SCALES = (1.0, 2.0, 3.0)


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


OPTIMIZERS = ("Lion + DDP", "DistributedLion (majority)", "DistributedLion (average)")
#: The optimizers the learning-rate sweep trains (the average vote only at the demo's rate, for time).
SWEPT = OPTIMIZERS[:2]


def _quality(
    rank: int, world: int, steps: int, seeds: tuple[int, ...], scales: tuple[float, ...]
) -> dict[tuple[str, float, int], dict[str, Any]]:
    """Trains every (optimizer, learning-rate scale, seed); rank 0 records the curves.

    A seed picks the demo's initial weights and the order of the batches, the same for every
    optimizer (paired runs). A scale multiplies the demo's Lion learning rate for every optimizer
    alike; the weight decay stays the demo's.
    """
    import numpy as np
    from torch.nn.parallel import DistributedDataParallel

    from lion_cli.recipe import demo_data, demo_init, demo_settings
    from lion_torch import DistributedLion, Lion

    data = demo_data()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    settings = demo_settings("lion")
    per_rank = 32
    runs: dict[tuple[str, float, int], dict[str, Any]] = {}
    for scale in scales:
        for seed in seeds:
            for name in OPTIMIZERS if scale == 1.0 else SWEPT:
                model = _model()
                with torch.no_grad():  # the demo's initial weights, the same on every rank
                    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
                    for layer, (kernel, bias) in zip(layers, demo_init(seed)):
                        layer.weight.copy_(torch.from_numpy(kernel.T))
                        layer.bias.copy_(torch.from_numpy(bias))
                hyper = {
                    "lr": settings["lr"] * scale,
                    "betas": settings["betas"],
                    "weight_decay": settings["weight_decay"],
                }
                if name == "Lion + DDP":
                    net: torch.nn.Module = DistributedDataParallel(model)
                    opt: torch.optim.Optimizer = Lion(model.parameters(), **hyper)
                else:
                    net = model
                    vote = "average" if "average" in name else "majority"
                    opt = DistributedLion(model.parameters(), **hyper, vote=vote)
                curve = []
                decay = 1 - hyper["lr"] * hyper["weight_decay"]
                moved, still = 0.0, 0.0  # sums over steps of mean |update| / lr and of the unmoved share
                for step in range(steps):
                    rng = np.random.default_rng([seed, step])
                    order = rng.choice(len(x), per_rank * world, replace=False)
                    rows = torch.from_numpy(order[rank * per_rank : (rank + 1) * per_rank])
                    torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
                    before = None
                    if rank == 0:
                        before = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
                    opt.step()
                    opt.zero_grad()
                    if before is not None:
                        after = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
                        update = ((before * decay - after) / hyper["lr"]).abs()  # |u|: 1, 1/2 or 0
                        moved += float(update.mean())
                        still += float((update < 0.25).float().mean())
                    if rank == 0 and (step % 10 == 9 or step == steps - 1):
                        with torch.no_grad():
                            curve.append(float(torch.nn.functional.cross_entropy(model(x), y)))
                if rank == 0:
                    with torch.no_grad():
                        logits = model(x_test)
                    runs[name, scale, seed] = {
                        "curve": curve,
                        "test_loss": float(torch.nn.functional.cross_entropy(logits, y_test)),
                        "accuracy": float((logits.argmax(dim=1) == y_test).float().mean()),
                        "step_size": moved / steps,
                        "unmoved": still / steps,
                    }
    return runs


def _worker(rank: int, world: int, folder: str, task: str, args: tuple[Any, ...], out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(folder) / "store"), world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600)
    )
    try:
        result = {"bytes": _bytes, "quality": _quality}[task](rank, world, *args)
        dist.barrier()  # every rank is done before any rank closes its connections
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(result, out)


def _run(task: str, world: int, *args: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="lionkit-bench-") as folder:
        out = str(Path(folder) / "result.pt")
        mp.spawn(_worker, args=(world, folder, task, args, out), nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def _mean_spread(values: list[float]) -> str:
    """``mean ± sample standard deviation``."""
    import numpy as np

    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.4f} ± {spread:.4f}"


def _steps_to_reach(curve: list[float], target: float, steps: int) -> int | None:
    """The first recorded step (every 10th) whose training loss is at most ``target``."""
    for i, loss in enumerate(curve):
        if loss <= target:
            return min(10 * (i + 1), steps)
    return None


def _quality_report(
    runs: dict[tuple[str, float, int], dict[str, Any]],
    steps: int,
    seeds: tuple[int, ...],
    scales: tuple[float, ...],
) -> list[str]:
    """The quality tables: the demo's learning rate over seeds, then the same sweep for every optimizer."""
    import numpy as np

    ddp = OPTIMIZERS[0]
    final = {key: run["curve"][-1] for key, run in runs.items()}
    report = [
        "",
        f"Digits, 4 ranks, global batch 4 x 32, {steps} steps, the demo's Lion hyperparameters; "
        f"{len(seeds)} seeds (initial weights and batch order, the same for every optimizer); "
        "mean ± standard deviation over the seeds. Training loss over the whole training set; "
        "held-out loss and accuracy on the demo's held-out 20%. The ratio is per seed (paired), "
        "mean [min, max]. \"Lion + DDP reaches this loss at step\" measures the lag: the step at which "
        "Lion + DDP's curve first reaches this optimizer's final loss (every 10th step recorded), mean "
        "over the seeds. The last two columns, averaged over the steps and seeds: the mean length of a "
        "step per coordinate, |update| / lr (Lion moves each coordinate by lr or not at all), and the "
        "share of coordinates that a step leaves in place (a tie of the vote; sign 0 for Lion).",
        "",
        "| optimizer | final training loss | / Lion + DDP | held-out loss | held-out accuracy "
        "| Lion + DDP reaches this loss at step | mean \\|update\\| / lr | unmoved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in OPTIMIZERS:
        ratios = [final[name, 1.0, s] / final[ddp, 1.0, s] for s in seeds]
        reached = [_steps_to_reach(runs[ddp, 1.0, s]["curve"], final[name, 1.0, s], steps) for s in seeds]
        when = (
            f"{np.mean(reached):.0f}" if None not in reached
            else f"not reached for {reached.count(None)} of {len(seeds)} seeds (lower than its final)"
        )
        report.append(
            f"| {name} | {_mean_spread([final[name, 1.0, s] for s in seeds])} "
            f"| {np.mean(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] "
            f"| {_mean_spread([runs[name, 1.0, s]['test_loss'] for s in seeds])} "
            f"| {_mean_spread([runs[name, 1.0, s]['accuracy'] for s in seeds])} | {when} "
            f"| {np.mean([runs[name, 1.0, s]['step_size'] for s in seeds]):.3f} "
            f"| {np.mean([runs[name, 1.0, s]['unmoved'] for s in seeds]):.1%} |"
        )
    if len(scales) > 1:
        report += [
            "",
            f"The same learning-rate sweep for every optimizer (the demo's lr = {_demo_lr():.3g} times "
            f"the scale; the weight decay stays the demo's), the same seeds: final training loss after "
            f"{steps} steps, mean ± standard deviation; each optimizer's best in bold "
            "(the average vote is trained at the demo's rate only, to keep the run short).",
            "",
            "| optimizer | " + " | ".join(f"lr x {scale:g}" for scale in scales) + " |",
            "|---|" + "---|" * len(scales),
        ]
        best = {}
        for name in SWEPT:
            means = [float(np.mean([final[name, scale, s] for s in seeds])) for scale in scales]
            best[name] = int(np.argmin(means))
            cells = [_mean_spread([final[name, scale, s] for s in seeds]) for scale in scales]
            cells[best[name]] = f"**{cells[best[name]]}**"
            report.append(f"| {name} | " + " | ".join(cells) + " |")
        report += ["", "At each one's best learning rate, per seed (paired) against Lion + DDP's best:", ""]
        ddp_best = scales[best[ddp]]
        for name in SWEPT[1:]:
            mine = scales[best[name]]
            ratios = [final[name, mine, s] / final[ddp, ddp_best, s] for s in seeds]
            report.append(
                f"- {name} (lr x {mine:g}) / Lion + DDP (lr x {ddp_best:g}): "
                f"{np.mean(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"
            )
    return report


def _demo_lr() -> float:
    from lion_cli.recipe import demo_settings

    return float(demo_settings("lion")["lr"])


def _quality_plot(
    runs: dict[tuple[str, float, int], dict[str, Any]],
    steps: int,
    seeds: tuple[int, ...],
    scales: tuple[float, ...],
    path: Path,
) -> None:
    """Left: the training loss at the demo's rate, mean and range over the seeds. Right: the sweep."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2 if len(scales) > 1 else 1, figsize=(10 if len(scales) > 1 else 6, 3.5))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for name in OPTIMIZERS:
        curves = np.array([runs[name, 1.0, s]["curve"] for s in seeds])
        xs = [min(10 * (i + 1), steps) for i in range(curves.shape[1])]
        (line,) = ax.plot(xs, curves.mean(axis=0), label=name)
        ax.fill_between(xs, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step (global batch 4 x 32)")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"digits, 4 ranks, demo lr: mean and range over {len(seeds)} seeds", fontsize=9)
    if len(scales) > 1:
        ax = axes[1]
        lrs = [_demo_lr() * scale for scale in scales]
        for name in SWEPT:
            finals = np.array([[runs[name, scale, s]["curve"][-1] for s in seeds] for scale in scales])
            ax.errorbar(lrs, finals.mean(axis=1), yerr=finals.std(axis=1, ddof=1), marker="o", capsize=3,
                        label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (the same for every optimizer)")
        ax.set_ylabel(f"training loss after {steps} steps")
        ax.set_title("the same sweep for every optimizer (mean ± sd)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: bytes at 2 and 4 ranks; 60 quality steps, 2 seeds, no sweep",
    )
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
    for world in WORLDS[:2] if options.quick else WORLDS:
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

    steps, seeds, scales = (60, (0, 1), (1.0,)) if options.quick else (300, SEEDS, SCALES)
    runs = _run("quality", 4, steps, seeds, scales)
    report += _quality_report(runs, steps, seeds, scales)
    _quality_plot(runs, steps, seeds, scales, options.out / "distributed-quality.png")
    command = f"python benchmarks/bench_distributed.py --out docs/assets{' --quick' if options.quick else ''}"
    report += ["", f"Command: `{command}`."]
    text = "\n".join(report) + "\n"
    (options.out / "distributed-bench.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
