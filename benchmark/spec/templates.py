"""Render a row's model inputs from Jinja2 templates in Jinja's immutable sandbox, under per-render limits
(ARCHITECTURE.md, "spec", lists them; over any of them the render fails with a SpecError).

A spec is data, never code: templates run in ``ImmutableSandboxedEnvironment``, so a template received from
someone else cannot reach Python internals (``{{ ''.__class__.__mro__ }}`` raises SecurityError). A template
sees every column whose name is a Python identifier by that name (``{{ premise }}``) and the whole row as
``row`` (``{{ row['Observation Text'] }}``; a column literally called ``row`` is ``row['row']``).

The sandbox stops code execution but not a template that loops or allocates without end
(``{% for i in range(100000) %}{% for j in range(100000) %}``, ``{{ premise * 100000000 }}``), so each render
has limits, checked before the work they bound. Jinja calls back into the sandbox for calls and operators but
not for ``{% for %}`` iterations, ``~`` or constant text, so the parsed tree is rewritten (``_Counted``) to route
those three through functions of this module: an empty loop nested in a loop over a long string, or a
``{% set %}`` block filled with constant text in a loop, would otherwise run unseen.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import re
import time
from dataclasses import dataclass
from functools import lru_cache

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from benchmark.errors import SpecError

MAX_RENDER_CHARS = 100_000  # one rendered input, any string or list built on the way, any number passed to a call
MAX_PRINTED_CHARS = 4 * MAX_RENDER_CHARS  # everything printed per render, {% set %} blocks included
MAX_RANGE_ITEMS = 10_000  # range() items per render, all loops together
MAX_STEPS = 100_000  # loop iterations + calls + operators per render
MAX_RENDER_SECONDS = 2.0  # wall clock per render
MAX_POWER_EXPONENT = 64  # ``a ** b``: big-integer towers are not text
MAX_INT_BITS = 4096  # an integer result of ``*`` or ``**`` (a power tower grows without a large exponent)
_ITER, _CONCAT, _TEXT = "_afbench_loop", "_afbench_concat", "_afbench_text"  # see ``_Counted``
_BIG_NUMBER = re.compile(r"\d{6,}")  # a width or precision of a million or more, in a format string or argument
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")  # str.format taking a width from its arguments: "{:{}}"
# functions and filters whose integer arguments size their result (a width, a count, a fill)
_SIZING = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap", "batch", "slice",
                     "to_bytes"])


class TemplateBudgetError(Exception):
    """A render went over one of the limits above (turned into a SpecError by ``render``)."""


@dataclass
class _Budget:
    started: float
    steps: int = 0
    range_items: int = 0
    printed: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateBudgetError(f"the template took over {MAX_STEPS:,} steps (loop iterations, calls and "
                                      "operators) for one row")
        if time.perf_counter() - self.started > MAX_RENDER_SECONDS:
            raise TemplateBudgetError(f"rendering took over {MAX_RENDER_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("afbench_template_budget")  # set by ``render``


def _sized(value) -> int | None:
    """How many characters or items ``value`` would print as, nested lists counted deeply (a list of
    90,000 references to one list of 90,000 is 8.1e9 items, though it takes little memory); counting
    stops just over the limit, so it is cheap. None for anything else (a number)."""
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
        if id(v) not in seen:
            total = len(v)
            for item in (v.values() if isinstance(v, dict) else v):
                total += weight(item, depth + 1)
                if total > MAX_RENDER_CHARS:
                    break
            seen[id(v)] = total
        return seen[id(v)]

    return weight(value, 0)


def _check_size(n: int, what: str) -> None:
    if n > MAX_RENDER_CHARS:
        raise TemplateBudgetError(f"{what} would hold {n:,} items, over the limit of {MAX_RENDER_CHARS:,}")


def _check_bits(n: int, what: str) -> None:
    if n > MAX_INT_BITS:
        raise TemplateBudgetError(f"{what} would have about {n:,} bits, over the limit of {MAX_INT_BITS:,}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_format(fmt: str, values, percent: bool) -> None:
    """``'%1000000000s'``; or a width or precision taken from the arguments (a ``*`` in a '%' format, a
    nested field in ``str.format``, which also takes a string: ``"{:{}}".format(x, '1000000000')``)."""
    takes_width = "*" in fmt if percent else _NESTED_FIELD.search(fmt)
    big = takes_width and any(_is_int(v) and abs(v) > MAX_RENDER_CHARS
                              or not percent and isinstance(v, str) and _BIG_NUMBER.search(v) for v in values)
    if big or _BIG_NUMBER.search(fmt):
        raise TemplateBudgetError(f"a format string asks for a width or precision over the limit of "
                                  f"{MAX_RENDER_CHARS:,}")


def _guard(what: str, name: str, owner, args: tuple, kwargs: dict, percent: bool = False) -> None:
    """Before a function or filter ``name`` runs on ``owner`` (``owner.name(*args)``, ``owner|name(*args)``):
    a step of the budget, and refuse what would size its result over the limit."""
    _BUDGET.get().tick()
    if name in ("format", "format_map") and isinstance(owner, str):  # its arguments are data, not sizes
        values = [*args, *kwargs.values(), *(v for a in args if isinstance(a, dict) for v in a.values())]
        _check_format(owner, values, percent)
        return
    for a in (*args, *kwargs.values()) if name in _SIZING else ():
        if _is_int(a) and abs(a) > MAX_RENDER_CHARS:
            raise TemplateBudgetError(f"{what} got the number {a:,}, over the limit of {MAX_RENDER_CHARS:,}")
    if name == "replace" and isinstance(owner, str) and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        hits = owner.count(args[0]) if args[0] else len(owner) + 1
        _check_size(len(owner) + hits * len(args[1]), f"the result of {what}")


def _check_join(items: list, sep, what: str) -> None:
    _check_size(sum(len(str(x)) for x in items) + len(str(sep)) * len(items), f"the result of {what}")


def _guard_filter(fn):
    """Filters are called without the sandbox: wrap each in ``_guard`` (``center(10**9)``, a long join)."""
    name = fn.__name__.removeprefix("sync_").removeprefix("do_")
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0  # a context or environment comes first

    @functools.wraps(fn)  # keeps jinja_pass_arg (pass_context / pass_environment)
    def guarded(*args, **kwargs):
        head, value, params = args[:skip], args[skip] if len(args) > skip else None, args[skip + 1:]
        _guard(f"the filter '{name}'", name, value, params, kwargs, percent=True)
        if name == "join" and len(params) < 2 and kwargs.get("attribute") is None:  # items|join(sep)
            value = list(value)
            _check_join(value, params[0] if params else kwargs.get("d", ""), "the filter 'join'")
        return fn(*head, value, *params, **kwargs)

    return guarded


def _range(*args: int) -> range:
    rng = range(*args)
    b = _BUDGET.get()
    b.range_items += len(rng)
    if b.range_items > MAX_RANGE_ITEMS:
        raise TemplateBudgetError(
            f"range() would give {b.range_items:,} items in this render, over the limit of {MAX_RANGE_ITEMS:,}")
    return rng


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the per-render limits of this module."""

    intercepted_binops = frozenset(["*", "+", "%", "**"])
    _OPS = {"*": operator.mul, "+": operator.add, "%": operator.mod, "**": operator.pow}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.globals.update({"range": _range, _ITER: _iterate, _CONCAT: _concat, _TEXT: _text})
        for name in ("lipsum", "namespace"):  # lipsum(n=10**9) builds text; namespace lets loops accumulate
            self.globals.pop(name, None)
        self.filters = {k: _guard_filter(v) for k, v in self.filters.items()}

    def _parse(self, source, name, filename):
        return _Counted().visit(super()._parse(source, name, filename))

    def call_binop(self, context, operator_: str, left, right):
        _BUDGET.get().tick()
        ints = _is_int(left) and _is_int(right)
        if operator_ == "**" and isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
            raise TemplateBudgetError(f"the exponent {right} is over the limit of {MAX_POWER_EXPONENT}")
        if operator_ == "**" and ints and right > 0:
            _check_bits(left.bit_length() * right, "a power")
        elif operator_ == "*" and ints:
            _check_bits(left.bit_length() + right.bit_length(), "a product")
        elif operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                n = _sized(seq)
                if n is not None and _is_int(times):
                    _check_size(n * max(times, 0), "a repeated string or list")
        elif operator_ == "+" and None not in (sizes := (_sized(left), _sized(right))):
            _check_size(sum(sizes), "a concatenated string or list")
        elif operator_ == "%" and isinstance(left, str):
            values = right.values() if isinstance(right, dict) else right if isinstance(right, tuple) else (right,)
            _check_format(left, values, percent=True)
        return self._OPS[operator_](left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        if isinstance(__obj, jinja2.Undefined):  # ``lipsum(n=10**9)``: name what is missing, not the number
            return super().call(__context, __obj, *args, **kwargs)
        name = getattr(__obj, "__name__", "a function")
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
        _guard(f"'{name}'", name, owner, args, kwargs)
        if name == "join" and isinstance(owner, str) and len(args) == 1:  # sep.join(items)
            args = (list(args[0]),)
            _check_join(args[0], owner, "'join'")
        return super().call(__context, __obj, *args, **kwargs)


def _iterate(iterable):
    """What every ``{% for %}`` loops over: each iteration is a step of the render's budget."""
    b = _BUDGET.get()
    for item in iterable:
        b.tick()
        yield item


def _concat(*parts) -> str:
    _check_size(sum(len(str(p)) if _sized(p) is None else _sized(p) for p in parts), "a string joined with '~'")
    return "".join(str(p) for p in parts)


def _text(data: str) -> str:
    return data  # constant text printed through a call, so ``_finalize`` counts it


class _Counted(NodeTransformer):
    """Route ``{% for x in it %}`` through ``_iterate(it)``, ``a ~ b`` through ``_concat`` and constant text
    through ``_text``, where Jinja would not call back into the sandbox."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name(_ITER, "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return nodes.Call(nodes.Name(_CONCAT, "load"), list(node.nodes), [], None, None, lineno=node.lineno)

    def visit_TemplateData(self, node):
        return nodes.Call(nodes.Name(_TEXT, "load"), [nodes.Const(node.data)], [], None, None, lineno=node.lineno)


def _finalize(value):
    """``{{ x }}`` of a missing value is an error, not the text 'None' (a short CSV row, a JSON null).
    Everything printed, in the output or into a ``{% set %}`` block, counts towards ``MAX_PRINTED_CHARS``."""
    if value is None:
        raise TemplateBudgetError("a value the template prints is missing (None)")
    b = _BUDGET.get()
    n = _sized(value)
    b.printed += 1 if n is None else n
    if b.printed > MAX_PRINTED_CHARS:
        raise TemplateBudgetError(f"the template printed over {MAX_PRINTED_CHARS:,} characters for one row "
                                  "(output and {% set %} blocks together)")
    return value


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
    try:
        text_varies = "input.text" in task_templates and reads_row(task_templates["input.text"])
    except jinja2.TemplateSyntaxError:
        text_varies = False  # reported below
    for fld, source in task_templates.items():
        try:
            _ENV.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise SpecError(
                f"the template {source!r} is not valid Jinja2 ({e.message}, line {e.lineno})",
                file=file,
                field=fld,
                fix="write it as Jinja2, e.g. '{{ premise }}' for a column named premise",
            ) from None
        if not (fld.startswith("input.choices") and text_varies) and not reads_row(source):
            raise SpecError(
                f"the template {source!r} reads no column, so every row would get the same text",
                file=file,
                field=fld,
                fix="name a column: '{{ premise }}', or '{{ row['Observation Text'] }}' for a column whose name "
                    "has spaces (a quoted name inside {{ }} is a constant string, not a column)",
            )


def render(source: str, row: dict, *, file: str = "<task>", field: str = "input") -> str:
    token = _BUDGET.set(_Budget(time.perf_counter()))
    try:
        columns = {k: v for k, v in row.items() if isinstance(k, str) and k.isidentifier() and k != ROW}
        out = compile_template(source).render({**columns, ROW: row})  # printing is counted and bounded as it happens
        _check_size(len(out), "the rendered text")
        return out.strip()
    except Exception as e:  # noqa: BLE001 - any render failure is a spec problem: one paragraph per cause
        if isinstance(e, TemplateBudgetError):
            why, fix = (f"went over a rendering limit: {e}",
                        "templates should only pick and join a row's values; print an empty value with "
                        "'{{ x or \"\" }}' and keep loops and repetition small")
        elif isinstance(e, SecurityError):
            why, fix = (f"tried an unsafe operation ({e}); spec templates run in a sandbox",
                        "use only column values, filters and plain string methods in templates")
        elif isinstance(e, jinja2.UndefinedError):
            why, fix = (f"failed on a row with columns {sorted(row)}: {e.message}",
                        "reference only columns (and keys) the dataset has; row['NAME'] reads a column by any name")
        else:
            why, fix = (f"failed to render: {type(e).__name__}: {e}",
                        "check the template against a row of the data (afbench data TASK shows examples)")
        raise SpecError(f"the template {source!r} {why}", file=file, field=field, fix=fix) from None
    finally:
        _BUDGET.reset(token)
