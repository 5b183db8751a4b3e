"""Griffe extension: adapts two docstring habits of the packages to mkdocstrings, for the API pages.

* Math is written as optax and PyTorch write it, in reST (``:math:`x``` and ``.. math::``
  directives), which Sphinx and IDEs read. mkdocstrings renders docstrings as Markdown, where that
  would show as TeX source (and lose backslashes to Markdown escaping); both forms become
  ``pymdownx.arithmatex``'s ``$x$`` and ``$$ ... $$``, which MathJax typesets.
* An ``Args:`` entry may document several parameters at once (``lr, beta1: ...``, as NumPy style
  allows); Google style as griffe parses it wants one name per entry, so such an entry is repeated
  for each name.

The docstrings themselves are not changed: only what griffe hands to the renderer.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

INLINE = re.compile(r":math:`(?P<tex>[^`]+)`")
ARGS = re.compile(r"^(?P<indent>[ \t]*)(Args|Arguments|Parameters):[ \t]*$")
SHARED_ENTRY = re.compile(r"^(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)\s*,?\s*:\s+(?P<text>.*)$", re.DOTALL)
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")


def _aligned(tex: str) -> str:
    # reST math with alignment marks is implicitly aligned, as Sphinx renders it.
    if ("&" in tex or "\\\\" in tex) and "\\begin{" not in tex:
        return "\\begin{aligned}\n" + tex + "\n\\end{aligned}"
    return tex


def convert(text: str) -> str:
    """Rewrites ``.. math::`` blocks into ``$$`` blocks and ``:math:`x``` into ``$x$``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        directive = DIRECTIVE.match(lines[i])
        if not directive:
            out.append(lines[i])
            i += 1
            continue
        indent = len(directive["indent"].expandtabs())
        body = [directive["rest"]] if directive["rest"].strip() else []
        i += 1
        # The directive's content: the following lines indented deeper than it (blank lines inside).
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        tex = _aligned(textwrap.dedent("\n".join(body)).strip())
        pad = " " * indent
        out += ["", *(pad + line for line in ["$$", *tex.splitlines(), "$$"]), ""]
    return INLINE.sub(lambda m: f"${m['tex']}$", "\n".join(out))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_shared_entries(text: str) -> str:
    """Repeats an ``Args:`` entry that names several parameters (``a, b: text``) once per name."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        header = ARGS.match(lines[i])
        i += 1
        if not header:
            continue
        item_indent = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(header["indent"])):
            if not lines[i].strip():
                out.append(lines[i])
                i += 1
                continue
            item_indent = _indent(lines[i]) if item_indent is None else item_indent
            entry = [lines[i]]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > item_indent:
                entry.append(lines[i])
                i += 1
            shared = SHARED_ENTRY.match(" ".join(part.strip() for part in entry))
            if not shared:
                out += entry
                continue
            pad = " " * item_indent
            out += [f"{pad}{name.strip()}: {shared['text']}" for name in shared["names"].split(",")]
    return "\n".join(out)


class RstMath(griffe.Extension):
    """Rewrites each object's docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = split_shared_entries(convert(obj.docstring.value))
