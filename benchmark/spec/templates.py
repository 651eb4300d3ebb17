"""Render a row's model inputs from Jinja2 templates in a sandbox.

A spec is data, never code: templates run in Jinja's immutable sandbox, so a template received from
someone else cannot reach Python internals (``{{ ''.__class__.__mro__ }}`` raises SecurityError).
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from benchmark.errors import SpecError

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=1024)
def compile_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def template_columns(source: str) -> set[str]:
    """Top-level names a template reads (the row columns it needs)."""
    return set(meta.find_undeclared_variables(_ENV.parse(source)))


def check_syntax(source: str, *, file: str, field: str) -> None:
    try:
        _ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise SpecError(
            f"the template {source!r} is not valid Jinja2 ({e.message}, line {e.lineno})",
            file=file,
            field=field,
            fix="write it as Jinja2, e.g. '{{ premise }}' for a column named premise",
        ) from None


def render(source: str, row: dict, *, file: str = "<task>", field: str = "input") -> str:
    try:
        return compile_template(source).render(**row).strip()
    except SecurityError as e:
        raise SpecError(
            f"the template {source!r} tried an unsafe operation ({e}); spec templates run in a sandbox",
            file=file,
            field=field,
            fix="use only column values, filters and plain string methods in templates",
        ) from None
    except jinja2.UndefinedError as e:
        raise SpecError(
            f"the template {source!r} failed on a row with columns {sorted(row)}: {e.message}",
            file=file,
            field=field,
            fix="reference only columns the dataset has",
        ) from None
    except Exception as e:  # noqa: BLE001 - any other render failure is a spec problem
        raise SpecError(
            f"the template {source!r} failed to render: {type(e).__name__}: {e}",
            file=file,
            field=field,
            fix="check the template against a row of the data (afbench data TASK shows examples)",
        ) from None
