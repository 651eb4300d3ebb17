"""Spec prose (descriptions, notes) is written in Markdown; the HTML report renders a small subset.

The text is HTML-escaped first, then only this subset becomes markup: blank-line paragraphs, ``- `` /
``* `` bullet lists and ``1. `` numbered lists (either may start right under a paragraph line), `` `code` `` spans and ``**bold**``. Nothing a spec
author writes can become a tag or an attribute, so a description or a note cannot inject script.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from markupsafe import Markup, escape

BULLET = re.compile(r"^\s*[-*]\s+")
NUMBER = re.compile(r"^\s*\d+[.)]\s+")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def code_spans(text: str) -> list[str]:
    """``text`` split at its backticks: the odd parts are `code` spans (an unmatched backtick stays a literal one)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        parts[-2:] = ["`".join(parts[-2:])]
    return parts


def list_items(pattern: re.Pattern, lines: list[str]) -> list[str]:
    """A list block's items (``pattern``: their marker), each with the indented lines under it joined on."""
    items: list[list[str]] = []
    for ln in lines:
        if pattern.match(ln):
            items.append([pattern.sub("", ln, count=1)])
        else:  # an indented continuation of the item above
            items[-1].append(ln.strip())
    return [" ".join(it) for it in items]


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** (never bold inside code)."""
    out = []
    for i, part in enumerate(code_spans(text)):
        safe = str(escape(part))
        out.append(f"<code>{safe}</code>" if i % 2 else _BOLD.sub(r"<strong>\1</strong>", safe))
    return "".join(out)


def is_item(line: str) -> bool:
    return bool(BULLET.match(line) or NUMBER.match(line))


def _starts_list(line: str) -> bool:
    """An unindented bullet, or a numbered item 1 (CommonMark lets only these interrupt a paragraph)."""
    return not line[:1].isspace() and bool(BULLET.match(line) or re.match(r"1[.)]\s", line))


def _block(lines: list[str]) -> str:
    for pattern, tag in ((BULLET, "ul"), (NUMBER, "ol")):
        if all(pattern.match(ln) or (ln.startswith((" ", "\t")) and i) for i, ln in enumerate(lines)):
            body = "".join(f"<li>{_inline(it)}</li>" for it in list_items(pattern, lines))
            return f"<{tag}>{body}</{tag}>"
    return f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>"


def split_blocks(text: str | None, starts_list: Callable[[str], bool]) -> list[list[str]]:
    """Runs of non-blank lines; a ``starts_list`` line right under a paragraph line opens its own (as in CommonMark)."""
    blocks: list[list[str]] = [[]]
    for line in (text or "").splitlines():
        if starts_list(line) and blocks[-1] and not is_item(blocks[-1][0]):
            blocks.append([])
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def markdown_to_html(text: str | None) -> Markup:
    """The Markdown subset above as safe HTML (a ``Markup``, so autoescaping leaves it alone)."""
    return Markup("\n".join(_block(b) for b in split_blocks(text, _starts_list)))
