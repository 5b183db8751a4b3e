"""Every ``python`` block of docs/ and README.md runs; every ``lion`` command in a shell block parses.

Each Python block runs as a script in a fresh interpreter, in a temporary folder, with the repository
on ``PYTHONPATH`` and ``KERAS_BACKEND=jax``, so blocks cannot lean on each other's state and every
Keras block sees the same backend. Blocks preceded by ``<!-- skip: REASON -->`` are reported as
skipped with that reason (``docs/about-docs.md``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lion_cli.command import build_parser

from .blocks import ROOT, Block, all_blocks, blocks

PYTHON_BLOCKS = all_blocks("python")
SHELL_BLOCKS = all_blocks("bash")
TIMEOUT_S = 300


def _params(found: list[Block]) -> list[object]:
    return [
        pytest.param(b, id=b.name, marks=[pytest.mark.skip(reason=b.skip)] if b.skip else [])
        for b in found
    ]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment["KERAS_BACKEND"] = "jax"
    environment["MPLBACKEND"] = "Agg"
    environment.setdefault("PYTHONHASHSEED", "0")
    return environment


@pytest.mark.parametrize("block", _params(PYTHON_BLOCKS))
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_environment(), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{block.name} exited with status {result.returncode}\n--- code ---\n{block.code}"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )


def _lion_commands(block: Block) -> list[str]:
    commands = []
    for line in block.code.splitlines():
        line = line.strip().removeprefix("$ ")
        # Usage synopses such as `lion demo [--backend {torch,keras,jax,all}]` describe, they do not run.
        if line.startswith("lion ") and "[" not in line:
            commands.append(line.split("#", 1)[0].strip())
    return commands


LION_COMMANDS = [(b, command) for b in SHELL_BLOCKS for command in _lion_commands(b)]


@pytest.mark.parametrize(
    ("block", "command"), [pytest.param(b, c, id=f"{b.name}:{c}") for b, c in LION_COMMANDS]
)
def test_lion_command_parses(block: Block, command: str) -> None:
    words = shlex.split(command)[1:]
    args = build_parser().parse_args(words)  # argparse exits (SystemExit) on a bad command
    assert args.command in ("demo", "bench")


def test_the_docs_have_code_to_run() -> None:
    # The parametrized tests above would silently vanish if the extraction broke.
    runnable = [b for b in PYTHON_BLOCKS if not b.skip]
    assert len(runnable) >= 20, [b.name for b in PYTHON_BLOCKS]
    assert LION_COMMANDS, "no `lion` command found in the docs' shell blocks"


def test_skip_markers_are_attached_to_a_block() -> None:
    # A `<!-- skip: ... -->` that is not directly followed by a fenced block would skip nothing and
    # mislead the reader; every marker in the docs must belong to a block.
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if not path.is_file():
            continue
        markers = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("<!-- skip:"))
        attached = sum(1 for b in blocks(path) if b.skip)
        assert markers == attached, f"{path}: {markers} skip markers, {attached} attached to a block"


def test_block_extraction(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text\n\n```python\nx = 1\n```\n\n<!-- skip: needs a GPU -->\n```python\nimport cuda\n```\n\n"
        "  ```python\n  indented = True\n  ```\n\n~~~bash\nlion demo\n~~~\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.line, b.language, b.code, b.skip) for b in found] == [
        (3, "python", "x = 1\n", None),
        (8, "python", "import cuda\n", "needs a GPU"),
        (12, "python", "indented = True\n", None),
        (16, "bash", "lion demo\n", None),
    ]
