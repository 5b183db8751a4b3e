"""Griffe extension: turns the reStructuredText math of docstrings into Markdown math for the API pages.

The packages' docstrings write math as optax and PyTorch do, in reST (``:math:`x``` and
``.. math::`` directives), which Sphinx and IDEs read. mkdocstrings renders docstrings as Markdown,
where that would show as TeX source (and lose backslashes to Markdown escaping). Before rendering,
this extension rewrites both forms into ``pymdownx.arithmatex``'s ``$x$`` and ``$$ ... $$``, which
MathJax typesets. The docstrings themselves are not changed.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

INLINE = re.compile(r":math:`(?P<tex>[^`]+)`")
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


class RstMath(griffe.Extension):
    """Rewrites each object's docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
