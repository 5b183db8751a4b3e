"""Finds the fenced code blocks of the docs and README, with their skip markers.

A block is skipped only when the last non-blank line before its opening fence is an HTML comment
``<!-- skip: REASON -->`` at the start of a line (the rendered page does not show it); see
``docs/about-docs.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


class Block(NamedTuple):
    """One fenced code block: where it is, its language, its text, and why it is skipped (if it is)."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every page under docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Returns the fenced blocks of one markdown file (fences at most 3 spaces deep, as CommonMark)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = i + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        # CommonMark: up to `indent` leading spaces of each line belong to the fence's indentation.
        body = [line[min(indent, len(line) - len(line.lstrip(' '))):] for line in lines[i + 1 : end]]
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.match(before)
        found.append(
            Block(path, i + 1, opening["info"].lower(), "\n".join(body) + "\n", marker["reason"] if marker else None)
        )
        i = end + 1
    return found


#: Info strings that count as each language.
ALIASES = {"python": {"python", "py", "python3"}, "bash": {"bash", "sh", "shell", "console"}}


def all_blocks(language: str) -> list[Block]:
    """Every block of ``language`` (``python`` or ``bash``, with their aliases) in README.md and docs/."""
    names = ALIASES.get(language, {language})
    return [b for path in markdown_files() if path.is_file() for b in blocks(path) if b.language in names]
