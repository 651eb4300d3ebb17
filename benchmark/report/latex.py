"""Text for the LaTeX report: escaping of any string a report shows (spec prose, task names, verdicts with
Unicode marks) so that pdflatex accepts it, and the Markdown subset of spec prose as LaTeX.

Everything here is pure text -> text; ``build.py`` registers these as Jinja filters.
"""

from __future__ import annotations

import unicodedata

from benchmark.report.prose import BULLET, NUMBER, code_spans, is_item, list_items, split_blocks

# LaTeX's special characters first (the backslash before anything that introduces one)
_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "%": r"\%", "#": r"\#",
            "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
            ">": r"\textgreater{}"}
# the Unicode a report prints, as LaTeX (amsmath/amssymb); anything else is transliterated or dropped
_UNICODE = {"±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "—": "--", "–": "--", "−": "$-$",
            "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "×": r"$\times$", "·": r"$\cdot$",
            "…": r"\ldots{}", "↗": r"$\nearrow$", "↘": r"$\searrow$", "→": r"$\rightarrow$", "Δ": r"$\Delta$",
            "ρ": r"$\rho$", "ε": r"$\varepsilon$", "α": r"$\alpha$", "’": "'", "‘": "`", "“": "``", "”": "''", "°": r"$^\circ$",
            "✓": r"$\checkmark$", "✗": r"$\times$", "µ": r"$\mu$", "é": r"\'e", "è": r"\`e", "ü": r'\"u',
            "ö": r'\"o', "ä": r'\"a', "\u00a0": "~"}


def escape(text) -> str:
    """Any text as LaTeX source that pdflatex (T1, utf8) typesets as written."""
    out = []
    for ch in str(text):
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ch in _UNICODE:
            out.append(_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:  # transliterate (é -> e) or drop what has no ASCII form
            out.append(unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode())
    return "".join(out)


def _inline(text: str) -> str:
    """Escape, then `code` -> \\texttt and **bold** -> \\textbf."""
    out = []
    for i, part in enumerate(code_spans(text)):
        if i % 2:
            out.append(r"\texttt{" + escape(part) + "}")
        else:
            bits = part.split("**")
            out.append("".join(r"\textbf{" + escape(b) + "}" if j % 2 else escape(b) for j, b in enumerate(bits)))
    return "".join(out)


def markdown(text: str | None) -> str:
    """Spec prose (the Markdown subset of ``prose.py``: paragraphs, - / 1. lists, `code`, **bold**) as LaTeX."""
    out = []
    for b in split_blocks(text, is_item):  # any item right under a paragraph line starts a list
        for pattern, env in ((BULLET, "itemize"), (NUMBER, "enumerate")):
            if pattern.match(b[0]):
                body = "\n".join(r"\item " + _inline(it) for it in list_items(pattern, b))
                out.append(f"\\begin{{{env}}}\n{body}\n\\end{{{env}}}")
                break
        else:
            out.append(_inline(" ".join(ln.strip() for ln in b)))
    return "\n\n".join(out)
