"""The ``lion`` command (``lion_cli``): ``lion demo`` end to end on each backend, ``lion bench`` on a
stand-in script and on the installed one, and its errors (unknown backend, unwritable ``--out``, a
backend that is not installed, a folder without benchmarks)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree
import zlib
from pathlib import Path

import numpy as np
import pytest

from lion_cli import _bench, _common, _demo, command, recipe
from lion_core import from_adamw

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
    tables = _common.parse_markdown_tables(text)
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
        [sys.executable, "-m", "lion_cli", "demo", "--backend", backend, "--epochs", "1", "--out", str(out)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = _table_rows(result.stdout)
    label = "keras (jax)" if backend == "keras" else backend
    assert [(r["backend"], r["optimizer"]) for r in rows] == [(label, "lion"), (label, "adamw")]
    lion = from_adamw(recipe.DEMO_ADAMW["lr"], recipe.DEMO_ADAMW["weight_decay"], recipe.DEMO_ADAMW["betas"])
    assert float(rows[0]["lr"]) == pytest.approx(lion.lr, rel=1e-2)
    assert float(rows[1]["lr"]) == recipe.DEMO_ADAMW["lr"]
    for row in rows:
        # One epoch from Glorot-uniform weights: below the loss of a uniform guess, ln(10) = 2.30.
        assert 0 < float(row["final train loss"]) < np.log(10)
        assert 10.0 < float(row["test accuracy"].rstrip("%")) <= 100.0  # better than chance
        # Times are printed, never asserted (they depend on the machine's load): only their format,
        # three significant digits, so that a 0.04 s epoch does not print as 0.0.
        assert re.fullmatch(r"0\.0*[1-9]\d{2}|[1-9](\.\d\d|\d\.\d|\d\d+)", row["seconds"]), row["seconds"]
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
        from lion_cli import _demo
        print(json.dumps({name: _demo.load_backend(name).run_recipe(sys.argv[1], epochs=1, seed=0).losses[0]
                          for name in ("torch", "keras", "jax")}))
    """)
    for optimizer in recipe.DEMO_OPTIMIZERS:
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
        import lion_cli.demos.keras as demo
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
    data = recipe.demo_data()
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert sorted(np.unique(data.y_test)) == list(range(10))
    first, again = recipe.demo_init(0), recipe.demo_init(0)
    assert [k.shape for k, _ in first] == [(64, 128), (128, 128), (128, 10)]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    assert not np.array_equal(first[0][0], recipe.demo_init(1)[0][0])
    batches = recipe.demo_batches(len(data.x_train), epoch=3, seed=0)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(data.x_train)))
    assert {len(b) for b in batches[:-1]} == {recipe.DEMO_BATCH}
    assert not np.array_equal(np.concatenate(batches), np.concatenate(recipe.demo_batches(1437, epoch=4, seed=0)))


def test_demo_settings_are_from_adamw() -> None:
    adamw, lion = recipe.demo_settings("adamw"), recipe.demo_settings("lion")
    expected = from_adamw(adamw["lr"], adamw["weight_decay"], adamw["betas"])
    assert (lion["lr"], lion["weight_decay"], lion["betas"]) == (
        expected.lr, expected.weight_decay, (expected.beta1, expected.beta2))
    with pytest.raises(ValueError, match=r"Invalid `optimizer`: expected one of \('lion', 'adamw'\)\. Received: optimizer='sgd'"):
        recipe.demo_settings("sgd")


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_unknown_backend_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main(["demo", "--backend", "mxnet"])
    assert exit_info.value.code == 2
    assert re.search(r"argument --backend: invalid choice: 'mxnet' \(choose from .*torch.*keras.*jax.*all",
                     capsys.readouterr().err)


@pytest.mark.parametrize("epochs", ["0", "-3", "two"])
def test_bad_epochs_is_a_usage_error(epochs: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main(["demo", "--epochs", epochs])
    assert exit_info.value.code == 2
    assert f"argument --epochs: expected a positive integer, got '{epochs}'" in capsys.readouterr().err


def test_defaults() -> None:
    demo = command.build_parser().parse_args(["demo"])
    assert (demo.backend, demo.epochs, demo.seed, demo.out) == ("all", recipe.DEMO_EPOCHS, 0, "lion-demo")
    bench = command.build_parser().parse_args(["bench"])
    assert (bench.only, bench.quick, bench.out, bench.script_args) == (None, False, "lion-bench", [])


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes any attempt to train fail the test, and records which backends were loaded."""
    loaded: list[str] = []

    def refuse(name: str) -> None:
        loaded.append(name)
        raise AssertionError(f"the {name} backend was loaded; the command should have stopped before")

    monkeypatch.setattr(_demo, "load_backend", refuse)
    return loaded


def test_unwritable_out_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_training(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A path under a regular file cannot be created, whoever runs the test (root included).
    assert command.main(["demo", "--backend", "all", "--out", str(blocker / "plots")]) == 1
    error = capsys.readouterr().err
    assert f"lion demo: error: Cannot write to --out '{blocker / 'plots'}'" in error
    assert "Traceback" not in error


def test_out_that_is_a_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "lion-demo.png"
    target.write_bytes(b"")
    with pytest.raises(_common.CommandError, match=r"Cannot write to --out '.*lion-demo\.png': "):
        _common.prepare_out(target)


def test_prepare_out_creates_the_folder(tmp_path: Path) -> None:
    out = _common.prepare_out(tmp_path / "new" / "nested")
    assert out.is_dir() and list(out.iterdir()) == []  # the write check leaves nothing behind


@pytest.mark.parametrize(("backend", "module", "extra"), [("keras", "keras", "keras"), ("jax", "optax", "jax"),
                                                          ("torch", "torch", "torch")])
def test_missing_backend_names_the_extra(
    backend: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    assert command.main(["demo", "--backend", backend, "--out", str(tmp_path)]) == 1
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
    assert command.main(["demo", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    for backend in ("torch", "keras", "jax"):
        assert f"lion demo: skipping {backend}: not installed; install lionkit[{backend}]" in error
    assert "lion demo: error: No backend is installed" in error


def test_all_runs_only_the_installed_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "optax", None)
    ran: list[str] = []

    def fake_run_demo(names: list[str], *, epochs: int, seed: int, progress: bool) -> list[_demo.DemoResult]:
        ran.extend(names)
        history = recipe.History([2.0, 1.0], 0.5, 0.1)
        return [_demo.DemoResult(n, o, recipe.demo_settings(o), history)
                for n in names for o in recipe.DEMO_OPTIMIZERS]

    monkeypatch.setattr(_demo, "run_demo", fake_run_demo)
    assert command.main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    assert ran == ["torch"]
    assert_valid_png(tmp_path / "lion-demo.png")


def test_the_cli_imports_no_framework_and_no_adapter() -> None:
    # Importing the command and the recipe costs nothing: frameworks and adapters come when a backend runs.
    code = textwrap.dedent("""
        import sys
        import lion_cli, lion_cli.command, lion_cli.recipe, lion_cli.demos, lion_cli.benchmarks
        loaded = {"torch", "jax", "keras", "tensorflow", "optax", "triton", "sklearn", "matplotlib",
                  "lion_torch", "lion_keras", "lion_optax", "kernels", "lion_kernels"} & set(sys.modules)
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=_environment(), cwd=ROOT)


def test_no_demo_or_cli_code_is_left_in_the_core_or_the_adapters() -> None:
    for path in ("lion_core/cli.py", "lion_torch/demo.py", "lion_keras/demo.py", "lion_optax/demo.py"):
        assert not (ROOT / path).exists(), path
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    others = [p for p in packages if p.split(".")[0] != "lion_cli"]
    assert "lion_core" in others
    for package in others:
        for source in (ROOT / package.replace(".", "/")).glob("*.py"):
            assert "lion_cli" not in source.read_text(encoding="utf-8"), f"{source} mentions lion_cli"


def test_console_script_is_declared() -> None:
    # The README's `lion demo` needs the console script; pyproject.toml declares it, and it resolves.
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["lion"] == "lion_cli.command:main"
    packages = set(pyproject["tool"]["setuptools"]["packages"])
    assert {"lion_cli", "lion_cli.demos", "lion_cli.benchmarks"} <= packages
    assert command.main.__module__ == "lion_cli.command"


@pytest.mark.parametrize("words", [["--help"], ["demo", "--help"], ["bench", "--help"]], ids=" ".join)
def test_python_m_lion_cli_prints_the_help(words: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "lion_cli", *words], env=_environment(), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: lion {words[0] if len(words) > 1 else ''}".rstrip())
    expected = {"--help": "{demo,bench}", "demo": "--backend {torch,keras,jax,all}", "bench": "--only NAME"}
    assert expected[words[0]] in result.stdout


def test_times_are_printed_with_three_significant_digits() -> None:
    # The CI once failed on a table that printed a 0.04 s epoch as 0.0.
    assert [_common.significant(s) for s in (0.04, 0.041234, 0.5, 1.23456, 12.345, 123.45, 4567.8)] == [
        "0.0400", "0.0412", "0.500", "1.23", "12.3", "123", "4568"]
    assert _common.significant(0.0) == "0"
    history = recipe.History([2.0, 1.0], 0.5, 0.04)
    result = _demo.DemoResult("torch", "lion", recipe.demo_settings("lion"), history)
    rows = _table_rows(_demo.demo_table([result]))
    assert rows[0]["seconds"] == "0.0400"


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
    assert command.main(["bench", "--only", "torch-cpu", "--quick", "--benchmarks", str(folder),
                         "--out", str(out), "--", "--cases", "a"]) == 0
    captured = capsys.readouterr()
    # The script's own output: its smoke-run argument, then the arguments after --.
    assert "['--quick', '--cases', 'a']" in captured.err
    tables = _common.parse_markdown_tables(captured.out)
    assert tables[0][0] == ["case", "implementation", "ms/step", "GB/s"]
    assert [row[2] for row in tables[0][1]] == ["17.50", "36.00", "1.20", "9.90"]
    report = (out / "lion-bench.md").read_text()
    assert "## torch-cpu" in report
    if hasattr(os, "wait4"):
        assert re.search(r"# peak memory \(resident\) of the whole script process: [\d,]+ MiB", report)
    assert_valid_png(out / "lion-bench.png")


def test_bench_plots_one_panel_per_case(tmp_path: Path) -> None:
    result = _bench.BenchResult("torch-cpu", FAKE_TABLE, _common.parse_markdown_tables(FAKE_TABLE))
    assert [(title, labels, values) for title, _, labels, values in _bench._bench_panels(result)] == [
        ("torch-cpu: (a) 40M in 10", ["ours", "peer"], [17.5, 36.0]),
        ("torch-cpu: (b) 2M in 400", ["ours", "peer"], [1.2, 9.9]),
    ]
    assert _bench.plot_bench([result], tmp_path / "plot.png") == 2
    assert_valid_png(tmp_path / "plot.png")


def test_bench_plots_an_svg_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lionkit[torch] alone has no matplotlib: the same bars come as an SVG, one per table row."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _bench.BenchResult("torch-cpu", FAKE_TABLE, _common.parse_markdown_tables(FAKE_TABLE))
    assert _bench.plot_bench([result], tmp_path / "plot.png") == 2
    assert not (tmp_path / "plot.png").exists()
    svg = (tmp_path / "plot.svg").read_text(encoding="utf-8")
    root = xml.etree.ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    widths = [float(rect.get("width")) for rect in root.iter(f"{namespace}rect")]
    assert len(widths) == 4  # ours and the peer, in each of the two cases
    assert widths[0] / widths[1] == pytest.approx(17.5 / 36.0, rel=1e-3)
    texts = [text.text for text in root.iter(f"{namespace}text")]
    assert "torch-cpu: (a) 40M in 10 (ms/step)" in texts and "torch-cpu: (b) 2M in 400 (ms/step)" in texts


def test_bench_with_a_folder_without_scripts_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command.main(["bench", "--benchmarks", str(tmp_path / "nowhere")]) == 1
    error = capsys.readouterr().err
    assert error.strip() == (
        f"lion bench: error: --benchmarks '{tmp_path / 'nowhere'}' is not a folder holding any of the "
        "benchmark scripts (bench_torch_cpu.py, bench_torch_cuda.py, bench_optax.py, bench_keras_torch.py, "
        "bench_distributed.py); "
        "leave --benchmarks out to run the ones installed with lionkit"
    )


def test_the_benchmarks_ship_inside_lion_cli() -> None:
    # Without --benchmarks, lion bench runs lion_cli.benchmarks' modules: no source checkout needed.
    assert _bench.find_benchmarks(None) is None
    for benchmark in _bench.BENCHMARKS.values():
        assert _bench._available(benchmark, None), benchmark.module
        assert (ROOT / "lion_cli" / "benchmarks" / benchmark.script).is_file()


def test_bench_reports_a_failing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_optax.py").write_text("import sys\nsys.exit(3)\n")
    argv = ["bench", "--only", "optax", "--benchmarks", str(folder), "--out", str(tmp_path)]
    assert command.main(argv) == 1
    assert "lion bench: error: bench_optax.py failed with exit status 3" in capsys.readouterr().err


def test_bench_skips_cuda_without_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_torch_cuda.py").write_text("raise SystemExit('must not run')\n")
    monkeypatch.setattr(_bench, "_cuda_available", lambda: False)
    monkeypatch.setattr(_bench, "missing", lambda names: [])
    argv = ["bench", "--only", "torch-cuda", "--benchmarks", str(folder), "--out", str(tmp_path)]
    assert command.main(argv) == 1
    error = capsys.readouterr().err
    assert "lion bench: skipping torch-cuda: no CUDA device" in error
    assert "No benchmark can run here" in error


def test_parse_markdown_tables_ignores_prose() -> None:
    text = "intro | not a table\n\n| a | b |\n|---|:-:|\n| 1 | 2 |\n\ntext\n| x |\n| y |\n"
    assert _common.parse_markdown_tables(text) == [(["a", "b"], [["1", "2"]])]


# ------------------------------------------------------------------------------------------------
# lion bench from a built wheel, in a folder of its own
# ------------------------------------------------------------------------------------------------


def _build_wheel(tmp_path: Path) -> Path:
    """Builds lionkit's wheel from a copy of the checkout (the checkout itself stays untouched)."""
    import importlib.util
    import shutil

    source = tmp_path / "source"
    # Everything but version control, environments and build outputs: the wheel builds as from a clone.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", ".pytest_cache", "*.so",
        "lion-demo", "lion-bench"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--wheel-dir", str(tmp_path / "dist"),
         str(source)], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lionkit-*.whl")
    return wheel


@pytest.mark.slow
def test_lion_bench_runs_from_the_wheel_in_an_empty_folder(tmp_path: Path) -> None:
    import zipfile

    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "lion = lion_cli.command:main" in archive.read(entry_points).decode()
        site = tmp_path / "site"
        archive.extractall(site)
    for benchmark in _bench.BENCHMARKS.values():
        assert f"lion_cli/benchmarks/{benchmark.script}" in names
    for module in ("__main__", "command", "recipe", "demos/torch", "demos/keras", "demos/jax"):
        assert f"lion_cli/{module}.py" in names
    assert not {"lion_core/cli.py", "lion_torch/demo.py", "lion_keras/demo.py", "lion_optax/demo.py"} & names

    # The unpacked wheel comes first on the path, ahead of this checkout's editable install; the run
    # happens in an empty folder, so nothing of the checkout can stand in for the wheel's files.
    empty = tmp_path / "empty"
    empty.mkdir()
    environment = dict(os.environ, PYTHONPATH=str(site), MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, "-m", "lion_cli", "bench", "--only", "torch-cpu", "--quick", "--out", "out",
         "--", "--cases", "b"], cwd=empty, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "-m lion_cli.benchmarks.bench_torch_cpu --quick --cases b" in result.stderr
    report = (empty / "out" / "lion-bench.md").read_text()
    assert f"python {site / 'lion_cli' / 'benchmarks' / 'bench_torch_cpu.py'} --quick --cases b" in report
    header, rows = _common.parse_markdown_tables(result.stdout)[0]
    assert "ms/step" in " ".join(header), header
    names_column = next(i for i, name in enumerate(header) if name in ("implementation", "optimizer", "name"))
    implementations = " ".join(row[names_column] for row in rows)
    assert "lion_torch" in implementations or "lionkit" in implementations, implementations
    assert_valid_png(empty / "out" / "lion-bench.png")
    assert sorted(p.name for p in empty.iterdir()) == ["out"]


@pytest.mark.parametrize("module", ["lion_cli.demos.torch", "lion_cli.demos.jax"])
def test_demo_docstring_examples_run(module: str) -> None:
    # Each in a process of its own: the demo modules import their framework.
    code = (f"import doctest, importlib; result = doctest.testmod(importlib.import_module({module!r}));"
            " assert result.attempted > 0 and result.failed == 0, result")
    result = subprocess.run([sys.executable, "-c", code], env=_environment(), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("benchmark", list(_bench.BENCHMARKS.values()), ids=lambda b: b.name)
def test_the_checkouts_benchmark_entry_points_still_run(benchmark: _bench.Benchmark, tmp_path: Path) -> None:
    # `python benchmarks/bench_torch_cpu.py` (the docs' command) runs the module of lion_cli.benchmarks.
    entry_point = ROOT / "benchmarks" / benchmark.script
    result = subprocess.run([sys.executable, str(entry_point), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: {benchmark.script} [-h]"), result.stdout
