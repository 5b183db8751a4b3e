"""The ``lion`` command: ``lion demo`` end to end on PyTorch, ``lion bench`` on a stand-in script, and
its errors (unknown backend, unwritable ``--out``, a backend that is not installed, no benchmarks)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from lion_core import cli, from_adamw

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> tuple[int, int]:
    """Checks the PNG signature and every chunk's CRC; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
        chunks.append(kind)
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks, chunks
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment["MPLBACKEND"] = "Agg"
    return environment


def _table_rows(text: str) -> list[list[str]]:
    tables = cli.parse_markdown_tables(text)
    assert len(tables) == 1, text
    header, rows = tables[0]
    return [dict(zip(header, row)) for row in rows]  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# lion demo, end to end
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_demo_prints_the_table_and_writes_the_plot(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    environment = _environment()
    environment.pop("KERAS_BACKEND", None)  # `lion demo` picks Keras' backend itself
    result = subprocess.run(
        [sys.executable, "-m", "lion_core.cli", "demo", "--backend", backend, "--epochs", "1", "--out", str(out)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = _table_rows(result.stdout)
    label = "keras (jax)" if backend == "keras" else backend
    assert [(r["backend"], r["optimizer"]) for r in rows] == [(label, "lion"), (label, "adamw")]
    lion = from_adamw(cli.DEMO_ADAMW["lr"], cli.DEMO_ADAMW["weight_decay"], cli.DEMO_ADAMW["betas"])
    assert float(rows[0]["lr"]) == pytest.approx(lion.lr, rel=1e-2)
    assert float(rows[1]["lr"]) == cli.DEMO_ADAMW["lr"]
    for row in rows:
        # One epoch from Glorot-uniform weights: below the loss of a uniform guess, ln(10) = 2.30.
        assert 0 < float(row["final train loss"]) < np.log(10)
        assert 10.0 < float(row["test accuracy"].rstrip("%")) <= 100.0  # better than chance
        assert float(row["seconds"]) > 0
    width, height = assert_valid_png(out / "lion-demo.png")
    assert width >= 600 and height >= 300
    report = (out / "lion-demo.md").read_text()
    assert f"lion demo --backend {backend} --epochs 1" in report and f"| {label}" in report
    assert "epoch" in result.stderr  # the progress bars


def test_backends_train_the_same_recipe_to_the_same_losses() -> None:
    # Same initial weights, batches and hyperparameters: PyTorch, Keras and JAX agree on the first
    # epoch's loss up to float32 rounding (a Lion sign flip near 0 would show here, too).
    code = textwrap.dedent("""
        import json, os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        from lion_core import cli
        print(json.dumps({name: cli.load_backend(name).run_recipe(sys.argv[1], epochs=1, seed=0).losses[0]
                          for name in ("torch", "keras", "jax")}))
    """)
    for optimizer in cli.DEMO_OPTIMIZERS:
        result = subprocess.run([sys.executable, "-c", code, optimizer], env=_environment(), cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        losses = json.loads(result.stdout.strip().splitlines()[-1])
        assert losses["keras"] == pytest.approx(losses["torch"], rel=1e-3), (optimizer, losses)
        assert losses["jax"] == pytest.approx(losses["torch"], rel=1e-3), (optimizer, losses)


def test_keras_demo_trains_on_another_backend_in_a_subprocess() -> None:
    # Keras fixes its backend at import: asking for another one runs the recipe in a child process,
    # whose per-epoch losses still reach on_epoch.
    code = textwrap.dedent("""
        import json, os
        os.environ["KERAS_BACKEND"] = "torch"
        import keras
        import lion_keras.demo as demo
        children, child = [], demo._train_in_subprocess
        demo._train_in_subprocess = lambda *a, **k: children.append(k["backend"]) or child(*a, **k)
        seen = []
        history = demo.run_recipe("lion", epochs=1, backend="jax", on_epoch=lambda e, loss: seen.append((e, loss)))
        print(json.dumps({"imported": keras.backend.backend(), "children": children, "seen": seen,
                          "losses": history.losses}))
    """)
    result = subprocess.run([sys.executable, "-c", code], env=_environment(), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == "torch" and report["children"] == ["jax"]
    assert report["seen"] == [[0, report["losses"][0]]] and 0 < report["losses"][0] < np.log(10)


# ------------------------------------------------------------------------------------------------
# The demo recipe
# ------------------------------------------------------------------------------------------------


def test_demo_recipe_is_deterministic_and_shared() -> None:
    data = cli.demo_data()
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert sorted(np.unique(data.y_test)) == list(range(10))
    first, again = cli.demo_init(0), cli.demo_init(0)
    assert [k.shape for k, _ in first] == [(64, 128), (128, 128), (128, 10)]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    assert not np.array_equal(first[0][0], cli.demo_init(1)[0][0])
    batches = cli.demo_batches(len(data.x_train), epoch=3, seed=0)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(data.x_train)))
    assert {len(b) for b in batches[:-1]} == {cli.DEMO_BATCH}
    assert not np.array_equal(np.concatenate(batches), np.concatenate(cli.demo_batches(1437, epoch=4, seed=0)))


def test_demo_settings_are_from_adamw() -> None:
    adamw, lion = cli.demo_settings("adamw"), cli.demo_settings("lion")
    expected = from_adamw(adamw["lr"], adamw["weight_decay"], adamw["betas"])
    assert (lion["lr"], lion["weight_decay"], lion["betas"]) == (
        expected.lr, expected.weight_decay, (expected.beta1, expected.beta2))
    with pytest.raises(ValueError, match=r"Invalid `optimizer`: expected one of \('lion', 'adamw'\)\. Received: optimizer='sgd'"):
        cli.demo_settings("sgd")


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_unknown_backend_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--backend", "mxnet"])
    assert exit_info.value.code == 2
    assert re.search(r"argument --backend: invalid choice: 'mxnet' \(choose from .*torch.*keras.*jax.*all",
                     capsys.readouterr().err)


@pytest.mark.parametrize("epochs", ["0", "-3", "two"])
def test_bad_epochs_is_a_usage_error(epochs: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--epochs", epochs])
    assert exit_info.value.code == 2
    assert f"argument --epochs: expected a positive integer, got '{epochs}'" in capsys.readouterr().err


def test_defaults() -> None:
    demo = cli.build_parser().parse_args(["demo"])
    assert (demo.backend, demo.epochs, demo.seed, demo.out) == ("all", cli.DEMO_EPOCHS, 0, "lion-demo")
    bench = cli.build_parser().parse_args(["bench"])
    assert (bench.only, bench.quick, bench.out, bench.script_args) == (None, False, "lion-bench", [])


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes any attempt to train fail the test, and records which backends were loaded."""
    loaded: list[str] = []

    def refuse(name: str) -> None:
        loaded.append(name)
        raise AssertionError(f"the {name} backend was loaded; the command should have stopped before")

    monkeypatch.setattr(cli, "load_backend", refuse)
    return loaded


def test_unwritable_out_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_training(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A path under a regular file cannot be created, whoever runs the test (root included).
    assert cli.main(["demo", "--backend", "all", "--out", str(blocker / "plots")]) == 1
    error = capsys.readouterr().err
    assert f"lion demo: error: Cannot write to --out '{blocker / 'plots'}'" in error
    assert "Traceback" not in error


def test_out_that_is_a_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "lion-demo.png"
    target.write_bytes(b"")
    with pytest.raises(cli.CommandError, match=r"Cannot write to --out '.*lion-demo\.png': "):
        cli.prepare_out(target)


def test_prepare_out_creates_the_folder(tmp_path: Path) -> None:
    out = cli.prepare_out(tmp_path / "new" / "nested")
    assert out.is_dir() and list(out.iterdir()) == []  # the write check leaves nothing behind


@pytest.mark.parametrize(("backend", "module", "extra"), [("keras", "keras", "keras"), ("jax", "optax", "jax"),
                                                          ("torch", "torch", "torch")])
def test_missing_backend_names_the_extra(
    backend: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    assert cli.main(["demo", "--backend", backend, "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.strip() == (
        f"lion demo: error: The {backend} backend is not installed (cannot import {module}): "
        f"install lionkit[{extra}] (pip install 'lionkit[{extra}]')"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_all_skips_missing_backends_and_fails_when_none_is_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for module in ("torch", "keras", "jax"):
        monkeypatch.setitem(sys.modules, module, None)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    for backend in ("torch", "keras", "jax"):
        assert f"lion demo: skipping {backend}: not installed; install lionkit[{backend}]" in error
    assert "lion demo: error: No backend is installed" in error


def test_all_runs_only_the_installed_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "optax", None)
    ran: list[str] = []

    def fake_run_demo(names: list[str], *, epochs: int, seed: int, progress: bool) -> list[cli.DemoResult]:
        ran.extend(names)
        history = cli.History([2.0, 1.0], 0.5, 0.1)
        return [cli.DemoResult(n, o, cli.demo_settings(o), history) for n in names for o in cli.DEMO_OPTIMIZERS]

    monkeypatch.setattr(cli, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    assert ran == ["torch"]
    assert_valid_png(tmp_path / "lion-demo.png")


def test_import_lion_core_does_not_import_the_cli() -> None:
    code = "import sys, lion_core; assert 'lion_core.cli' not in sys.modules, 'cli imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, env=_environment(), cwd=ROOT)


def test_the_cli_imports_no_framework() -> None:
    code = textwrap.dedent("""
        import sys
        import lion_core.cli
        loaded = {"torch", "jax", "keras", "tensorflow", "optax", "sklearn", "matplotlib"} & set(sys.modules)
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=_environment(), cwd=ROOT)


def test_console_script_is_declared() -> None:
    # The README's `lion demo` needs the console script; pyproject.toml declares it.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project.get("scripts", {}).get("lion") == "lion_core.cli:main"


# ------------------------------------------------------------------------------------------------
# lion bench
# ------------------------------------------------------------------------------------------------

FAKE_TABLE = """| case | implementation | ms/step | GB/s |
|---|---|---:|---:|
| (a) 40M in 10 | ours | 17.50 | 45.7 |
| (a) 40M in 10 | peer | 36.00 | 22.2 |
| (b) 2M in 400 | ours | 1.20 | 33.3 |
| (b) 2M in 400 | peer | 9.90 | 4.0 |"""
FAKE_BENCH = f"import sys\nprint('# a stand-in benchmark', sys.argv[1:])\nprint({FAKE_TABLE!r})\n"


def test_bench_runs_the_scripts_and_writes_table_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_torch_cpu.py").write_text(FAKE_BENCH)
    out = tmp_path / "out"
    assert cli.main(["bench", "--only", "torch-cpu", "--quick", "--benchmarks", str(folder), "--out", str(out),
                     "--", "--cases", "a"]) == 0
    captured = capsys.readouterr()
    # The script's own output: its smoke-run argument, then the arguments after --.
    assert "['--quick', '--cases', 'a']" in captured.err
    tables = cli.parse_markdown_tables(captured.out)
    assert tables[0][0] == ["case", "implementation", "ms/step", "GB/s"]
    assert [row[2] for row in tables[0][1]] == ["17.50", "36.00", "1.20", "9.90"]
    report = (out / "lion-bench.md").read_text()
    assert "## torch-cpu" in report
    if hasattr(os, "wait4"):
        assert re.search(r"# peak memory \(resident\) of the whole script process: [\d,]+ MiB", report)
    assert_valid_png(out / "lion-bench.png")


def test_bench_plots_one_panel_per_case(tmp_path: Path) -> None:
    result = cli.BenchResult("torch-cpu", FAKE_TABLE, cli.parse_markdown_tables(FAKE_TABLE))
    assert [(title, labels, values) for title, _, labels, values in cli._bench_panels(result)] == [
        ("torch-cpu: (a) 40M in 10", ["ours", "peer"], [17.5, 36.0]),
        ("torch-cpu: (b) 2M in 400", ["ours", "peer"], [1.2, 9.9]),
    ]
    assert cli.plot_bench([result], tmp_path / "plot.png") == 2
    assert_valid_png(tmp_path / "plot.png")


def test_bench_without_benchmarks_folder_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "--benchmarks", str(tmp_path / "nowhere")]) == 1
    error = capsys.readouterr().err
    assert "lion bench: error: lion bench runs the scripts in the benchmarks/ folder of a lionkit source checkout" in error
    assert str(tmp_path / "nowhere") in error


def test_bench_reports_a_failing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_optax.py").write_text("import sys\nsys.exit(3)\n")
    assert cli.main(["bench", "--only", "optax", "--benchmarks", str(folder), "--out", str(tmp_path)]) == 1
    assert "lion bench: error: bench_optax.py failed with exit status 3" in capsys.readouterr().err


def test_bench_skips_cuda_without_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_torch_cuda.py").write_text("raise SystemExit('must not run')\n")
    monkeypatch.setattr(cli, "_cuda_available", lambda: False)
    monkeypatch.setattr(cli, "_missing", lambda names: [])
    assert cli.main(["bench", "--only", "torch-cuda", "--benchmarks", str(folder), "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "lion bench: skipping torch-cuda: no CUDA device" in error
    assert "No benchmark can run here" in error


def test_parse_markdown_tables_ignores_prose() -> None:
    text = "intro | not a table\n\n| a | b |\n|---|:-:|\n| 1 | 2 |\n\ntext\n| x |\n| y |\n"
    assert cli.parse_markdown_tables(text) == [(["a", "b"], [["1", "2"]])]
