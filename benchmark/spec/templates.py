"""Render a row's model inputs from Jinja2 templates in a sandbox with a resource budget.

A spec is data, never code: templates run in Jinja's immutable sandbox, so a template received from
someone else cannot reach Python internals (``{{ ''.__class__.__mro__ }}`` raises SecurityError).

A template sees every column whose name is a Python identifier by that name (``{{ premise }}``) and
the whole row as ``row`` (``{{ row['Observation Text'] }}``, ``{{ row['ctx']['hint'] }}``), so a
column whose header has spaces or dashes needs no renaming. A column literally called ``row`` is
``row['row']``.

The sandbox stops code execution but not a template that loops or allocates without end
(``{% for i in range(100000) %}{% for j in range(100000) %}``, ``{{ premise * 100000000 }}``).
``_BudgetedSandbox`` bounds the work of one render, not only its result: every ``{% for %}`` iterates
through a counter (the template's syntax tree is rewritten at parse time), and loop iterations, calls
and operators share one budget of steps; ``range`` items are counted; strings, lists and nested lists
that ``*`` / ``+`` would make are sized (deeply) *before* they are built; format widths and precisions
(``'%*s' % (10**9, x)``, ``"{:{}}".format(x, 10**9)``, ``center(10**9)``) are refused; integer
arithmetic is stopped above ``MAX_INT_BITS``; and the output length and the wall-clock time are
checked on every step. Over any of them the render fails fast with a SpecError.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from benchmark.errors import SpecError

MAX_RENDER_CHARS = 100_000  # one rendered input (and any string or list built on the way)
MAX_RANGE_ITEMS = 10_000  # range() items per render, all loops together
MAX_RENDER_SECONDS = 2.0  # wall clock per render
MAX_POWER_EXPONENT = 64  # ``a ** b``: big-integer towers are not text
MAX_INT_BITS = 4096  # an integer result of ``*`` or ``**`` (a power tower grows without a large exponent)
MAX_STEPS = 100_000  # loop iterations + calls + operators per render
MAX_PRINTED_CHARS = 4 * MAX_RENDER_CHARS  # everything printed per render, {% set %} blocks included
_ITER, _CONCAT, _TEXT = "_afbench_loop", "_afbench_concat", "_afbench_text"  # see ``_BudgetedSandbox._parse``


class TemplateBudgetError(Exception):
    """A render went over one of the limits above (turned into a SpecError by ``render``)."""


@dataclass
class _Budget:
    started: float
    range_items: int = 0
    chars: int = 0
    steps: int = 0
    printed: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateBudgetError(f"the template took over {MAX_STEPS:,} steps (loop iterations, calls and "
                                      "operators) for one row")
        if time.perf_counter() - self.started > MAX_RENDER_SECONDS:
            raise TemplateBudgetError(f"rendering took over {MAX_RENDER_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("afbench_template_budget", default=None)


def _budget() -> _Budget:
    b = _BUDGET.get()
    if b is None:  # rendered outside ``render`` (e.g. a test calling the template directly)
        b = _Budget(time.perf_counter())
        _BUDGET.set(b)
    return b


def _sized(value) -> int | None:
    """How many characters or items ``value`` would print as, nested lists counted deeply (a list of
    90,000 references to one list of 90,000 is 8.1e9 items, though it takes little memory); counting
    stops just over the limit, so it is cheap."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | tuple | dict):
        return None
    seen: dict[int, int] = {}

    def weight(v, depth: int) -> int:
        if isinstance(v, str):
            return len(v)
        if not isinstance(v, list | tuple | dict) or depth > 50:
            return 1
        if id(v) in seen:
            return seen[id(v)]
        total = len(v)
        for item in (v.values() if isinstance(v, dict) else v):
            total += weight(item, depth + 1)
            if total > MAX_RENDER_CHARS:
                break
        seen[id(v)] = total
        return total

    return weight(value, 0)


def _iterate(iterable) -> Iterator:
    """What every ``{% for %}`` loops over: each iteration is a step of the render's budget."""
    b = _budget()
    for item in iterable:
        b.tick()
        yield item


def _check_size(n: int, what: str) -> None:
    if n > MAX_RENDER_CHARS:
        raise TemplateBudgetError(f"{what} would hold {n:,} items, over the limit of {MAX_RENDER_CHARS:,}")


def _budgeted_range(*args: int) -> Iterator[int]:
    rng = range(*args)
    b = _budget()
    if b.range_items + len(rng) > MAX_RANGE_ITEMS:
        raise TemplateBudgetError(
            f"range() would give {b.range_items + len(rng):,} items in this render, over the limit of "
            f"{MAX_RANGE_ITEMS:,}")
    b.range_items += len(rng)
    b.tick()
    return iter(rng)


_FORMAT_NUMBER = re.compile(r"\d{6,}")  # a width or precision of a million or more in a format string
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")  # str.format with a width given as an argument: "{:{}}"
# functions and filters whose integer arguments size their result (a width, a count, a fill)
_SIZING = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap", "batch", "slice",
                     "to_bytes"])


def _check_args(args, kwargs, what: str) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_RENDER_CHARS:
            raise TemplateBudgetError(f"{what} got the number {a:,}, over the limit of {MAX_RENDER_CHARS:,}")


def _big(a) -> bool:
    """An argument that could be a width or precision far over the limit (10**9, or "1000000000")."""
    if isinstance(a, int) and not isinstance(a, bool):
        return abs(a) > MAX_RENDER_CHARS
    return isinstance(a, str) and bool(_FORMAT_NUMBER.search(a))


def _check_percent(fmt: str, args) -> None:
    """``'%*s' % (10**9, x)``: a ``*`` takes its width or precision from the arguments."""
    values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else (args,)
    if "*" in fmt and any(_big(a) for a in values if not isinstance(a, str)):
        raise TemplateBudgetError("a '%' format takes a width or precision ('*') over the limit from its arguments")


def _check_format_args(fmt: str, args, kwargs) -> None:
    """``"{:{}}".format(x, 10**9)``: a nested field takes its width or precision from the arguments."""
    if _NESTED_FIELD.search(fmt) and any(_big(a) for a in (*args, *kwargs.values())):
        raise TemplateBudgetError("a format string takes a width or precision over the limit from its arguments")


def _check_int(n, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_INT_BITS:
        raise TemplateBudgetError(f"{what} would have about {n:,} bits, over the limit of {MAX_INT_BITS:,}")


def _join_size(items: list, sep: str) -> int:
    return sum(len(str(x)) for x in items) + len(sep) * max(0, len(items) - 1)


def _guard_filter(fn):
    """Wrap a filter so sizing arguments are bounded (``center(10**9)``, ``indent(10**9)``)."""

    sizing = fn.__name__.removeprefix("do_") in _SIZING
    fmt = fn.__name__ == "do_format"
    join = fn.__name__ in ("do_join", "sync_do_join")

    @functools.wraps(fn)  # keeps jinja_pass_arg (pass_context / pass_environment)
    def guarded(*args, **kwargs):
        if sizing:
            _check_args(args[1:], kwargs, f"the filter '{fn.__name__.removeprefix('do_')}'")
        if join and len(args) >= 2 and kwargs.get("attribute") is None and len(args) < 4:
            args = (args[0], list(args[1]), *args[2:])  # sized before joining: 10,000 x a long separator
            sep = args[2] if len(args) > 2 else kwargs.get("d", "")
            _check_size(_join_size(args[1], str(sep)), "the result of the filter 'join'")
        if fmt and args and isinstance(args[0], str) and _FORMAT_NUMBER.search(args[0]):
            raise TemplateBudgetError("a format string asks for a width or precision of a million or more")
        if fmt and args and isinstance(args[0], str):
            _check_percent(args[0], kwargs or tuple(args[1:]))
        out = fn(*args, **kwargs)
        n = _sized(out)
        if n is not None:
            _check_size(n, f"the result of the filter '{fn.__name__}'")
        return out

    return guarded


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the per-render limits of this module."""

    intercepted_binops = frozenset(["*", "+", "%", "**"])

    def __init__(self, **kw):
        super().__init__(**kw)
        self.globals["range"] = _budgeted_range
        self.globals.update({_ITER: _iterate, _CONCAT: _concat, _TEXT: _text})
        for name in ("lipsum", "namespace"):  # lipsum(n=10**9) builds text; namespace lets loops accumulate
            self.globals.pop(name, None)
        self.filters = {k: _guard_filter(v) for k, v in self.filters.items()}

    def _parse(self, source, name, filename):
        """Parse, then rewrite the tree so that the work of a render is counted where Jinja would not call
        back into the sandbox: every ``{% for x in it %}`` loops over ``_afbench_loop(it)`` (a step per
        iteration, so an empty nested loop over a long string is stopped), ``a ~ b`` is sized before it
        is joined, and constant text is printed through a call so ``_finalize`` counts it too (text
        gathered by ``{% set x %}...{% endset %}`` never reaches the output check)."""
        return _Counted().visit(super()._parse(source, name, filename))

    def call_binop(self, context, operator_: str, left, right):
        _budget().tick()
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
        if operator_ == "*" and ints:
            _check_int(left.bit_length() + right.bit_length(), "a product")
        elif operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                n = _sized(seq)
                if n is not None and isinstance(times, int):
                    _check_size(n * max(times, 0), "a repeated string or list")
        elif operator_ == "+":
            a, b = _sized(left), _sized(right)
            if a is not None and b is not None:
                _check_size(a + b, "a concatenated string or list")
        elif operator_ == "%" and isinstance(left, str) and _FORMAT_NUMBER.search(left):
            raise TemplateBudgetError("a '%' format string asks for a width or precision of a million or more")
        elif operator_ == "%" and isinstance(left, str):
            _check_percent(left, right)
        elif operator_ == "**" and isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
            raise TemplateBudgetError(f"the exponent {right} is over the limit of {MAX_POWER_EXPONENT}")
        elif operator_ == "**" and ints and right > 0:
            _check_int(left.bit_length() * right, "a power")
        return {"*": operator.mul, "+": operator.add, "%": operator.mod, "**": operator.pow}[operator_](left, right)

    def wrap_str_format(self, value):
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map") \
                and _FORMAT_NUMBER.search(owner):
            def refuse(*args, **kwargs):
                raise TemplateBudgetError("a format string asks for a width or precision of a million or more")
            return refuse
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and isinstance(owner, str) and _NESTED_FIELD.search(owner):
            def checked(*args, **kwargs):
                mapping = args[0] if getattr(value, "__name__", "") == "format_map" and args else {}
                _check_format_args(owner, args, {**kwargs, **(mapping if isinstance(mapping, dict) else {})})
                return wrapped(*args, **kwargs)
            return checked
        return wrapped

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _budget().tick()
        name = getattr(__obj, "__name__", "a function")
        owner = getattr(__obj, "__self__", None)
        if name in _SIZING:
            _check_args(args, kwargs, f"'{name}'")
        if name == "join" and isinstance(owner, str) and len(args) == 1:
            args = (list(args[0]),)
            _check_size(_join_size(args[0], owner), "the result of 'join'")
        if name == "replace" and isinstance(owner, str) and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
            hits = owner.count(args[0]) if args[0] else len(owner) + 1
            _check_size(len(owner) + hits * len(args[1]), "the result of 'replace'")
        out = super().call(__context, __obj, *args, **kwargs)
        n = _sized(out)
        if n is not None:
            _check_size(n, f"the result of '{name}'")
        return out


def _finalize(value):
    """``{{ x }}`` of a missing value is an error, not the text 'None' (a short CSV row, a JSON null).
    Everything printed, in the output or into a ``{% set %}`` block, counts towards ``MAX_PRINTED_CHARS``."""
    if value is None:
        raise TemplateBudgetError("a value the template prints is missing (None)")
    b = _budget()
    n = _sized(value)
    b.printed += n if n is not None else 1
    if b.printed > MAX_PRINTED_CHARS:
        raise TemplateBudgetError(f"the template printed over {MAX_PRINTED_CHARS:,} characters for one row "
                                  "(output and {% set %} blocks together)")
    return value


def _text(data: str) -> str:
    return data


def _concat(*parts) -> str:
    _check_size(sum(_sized(p) or len(str(p)) for p in parts), "a string joined with '~'")
    return "".join(str(p) for p in parts)


class _Counted(NodeTransformer):
    """The syntax-tree rewrite of ``_BudgetedSandbox._parse``."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name(_ITER, "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return nodes.Call(nodes.Name(_CONCAT, "load"), list(node.nodes), [], None, None, lineno=node.lineno)

    def visit_TemplateData(self, node):
        return nodes.Call(nodes.Name(_TEXT, "load"), [nodes.Const(node.data)], [], None, None, lineno=node.lineno)


_ENV = _BudgetedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False,
                        finalize=_finalize)
ROW = "row"  # the name of the whole row in templates


@lru_cache(maxsize=1024)
def compile_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def template_columns(source: str) -> set[str]:
    """Columns a template reads: top-level names, plus ``row['NAME']`` / ``row.NAME`` with a constant NAME.

    ``row`` itself and the sandbox's globals (``range``, ...) are not columns.
    """
    ast = _ENV.parse(source)
    names = set(meta.find_undeclared_variables(ast)) - set(_ENV.globals) - {ROW}
    for node in ast.find_all((nodes.Getitem, nodes.Getattr)):
        if isinstance(node.node, nodes.Name) and node.node.name == ROW:
            if isinstance(node, nodes.Getattr):
                if not hasattr(dict, node.attr):  # row.get('x', '') reads an optional column, not 'get'
                    names.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                names.add(node.arg.value)
    return names


def reads_row(source: str) -> bool:
    """Whether a template reads anything of the row (a column, or the whole row)."""
    ast = _ENV.parse(source)
    return bool(set(meta.find_undeclared_variables(ast)) - set(_ENV.globals))


def check_task_templates(task_templates: dict[str, str], *, file: str) -> None:
    """Spec-load-time checks of a task's templates (field -> source): valid Jinja2, and reading columns.

    ``input.text`` and ``input.text_pair`` must each read a column: a constant there (typically a quoted
    column name, ``'{{ "Observation Text" }}'``) gives every row the same text. A multiple-choice
    choice may be constant (answer options such as "yes" / "no") when ``input.text`` reads a column.
    """
    text_varies = "input.text" in task_templates and reads_row_safe(task_templates["input.text"])
    for fld, src in task_templates.items():
        check_template(src, file=file, field=fld,
                       require_column=not (fld.startswith("input.choices") and text_varies))


def reads_row_safe(source: str) -> bool:
    try:
        return reads_row(source)
    except jinja2.TemplateSyntaxError:
        return False  # reported by check_template


def check_template(source: str, *, file: str, field: str, require_column: bool = True) -> None:
    """Valid Jinja2, and (``require_column``) it reads at least one column: a constant trains on nothing."""
    try:
        _ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise SpecError(
            f"the template {source!r} is not valid Jinja2 ({e.message}, line {e.lineno})",
            file=file,
            field=field,
            fix="write it as Jinja2, e.g. '{{ premise }}' for a column named premise",
        ) from None
    if require_column and not reads_row(source):
        raise SpecError(
            f"the template {source!r} reads no column, so every row would get the same text",
            file=file,
            field=field,
            fix="name a column: '{{ premise }}', or '{{ row['Observation Text'] }}' for a column whose name "
                "has spaces (a quoted name inside {{ }} is a constant string, not a column)",
        )


check_syntax = check_template  # the old name


def template_vars(row: dict) -> dict:
    """The variables a template sees: identifier-named columns, and ``row`` = the whole row."""
    out = {k: v for k, v in row.items() if isinstance(k, str) and k.isidentifier() and k != ROW}
    out[ROW] = row
    return out


def _render_bounded(template: jinja2.Template, row: dict) -> str:
    budget = _Budget(time.perf_counter())
    token = _BUDGET.set(budget)
    try:
        parts = []
        for chunk in template.generate(**template_vars(row)):
            budget.chars += len(chunk)
            _check_size(budget.chars, "the rendered text")
            budget.tick()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


def render(source: str, row: dict, *, file: str = "<task>", field: str = "input") -> str:
    try:
        return _render_bounded(compile_template(source), row).strip()
    except TemplateBudgetError as e:
        raise SpecError(
            f"the template {source!r} went over a rendering limit: {e}",
            file=file,
            field=field,
            fix="templates should only pick and join a row's values; print an empty value with "
                "'{{ x or \"\" }}' and keep loops and repetition small",
        ) from None
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
            fix="reference only columns (and keys) the dataset has; row['NAME'] reads a column by any name",
        ) from None
    except Exception as e:  # noqa: BLE001 - any other render failure is a spec problem
        raise SpecError(
            f"the template {source!r} failed to render: {type(e).__name__}: {e}",
            file=file,
            field=field,
            fix="check the template against a row of the data (afbench data TASK shows examples)",
        ) from None
