"""Filter expressions written as text (CLI ``--where``, job files) → ``pyarrow.compute`` expressions.

A small, safe SQL-like grammar (never ``eval``)::

    expr     := or
    or       := and ("OR" and)*
    and      := not ("AND" not)*
    not      := "NOT" not | cmp
    cmp      := operand (op operand | "IS" ["NOT"] "NULL" | ["NOT"] "IN" "(" literal, ... ")")?
    op       := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    operand  := column | literal | "(" expr ")"
    literal  := number | 'string' | TRUE | FALSE | NULL | TIMESTAMP 'ISO-8601'

Columns are bare identifiers or "double-quoted"; keywords are case-insensitive. ``TIMESTAMP``
literals are UTC (naive means UTC) and compare with timestamp columns of any unit.

Limits: parentheses and ``NOT`` nest at most :data:`MAX_DEPTH` levels (deeper is a ConfigError,
never a ``RecursionError``), and a filter has at most :data:`MAX_CONDITIONS` conditions (pyarrow
crashes the process on some thousands; ``IN (…)`` takes long lists of values as one condition).
Chains of ``AND``/``OR`` are built as balanced trees.

:func:`check_filter` binds a filter to a schema before anything runs: an unknown column is named
(with the closest match and the columns there are), a comparison of mismatched types names both
sides and their types.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError, SchemaError
from .timeutil import TIME_TYPE, to_micros

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | '(?P<string>(?:[^']|'')*)'
      | "(?P<quoted>(?:[^"]|"")+)"
      | (?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
MAX_DEPTH = 100
"""How deep parentheses and ``NOT`` may nest in one filter."""

MAX_CONDITIONS = 1_000
"""How many conditions (comparisons, IS NULL, IN) one filter may have: pyarrow crashes (a
segmentation fault, not an exception) on some thousands of them."""

_KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false", "timestamp"}
_COMPARE = {
    "=": "equal",
    "==": "equal",
    "!=": "not_equal",
    "<>": "not_equal",
    "<": "less",
    "<=": "less_equal",
    ">": "greater",
    ">=": "greater_equal",
}


@dataclass(frozen=True)
class _Tok:
    kind: str  # number | string | column | op | keyword | end
    value: str
    pos: int


@dataclass(frozen=True)
class _Operand:
    """What a comparison compares, for messages: ``column amount (double)``, ``'x' (string)``."""

    text: str
    column: str | None = None


@dataclass(frozen=True)
class _Comparison:
    """One comparison of the filter, checked on its own against a schema."""

    expr: pc.Expression
    left: _Operand
    right: _Operand
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    end = len(text.rstrip())
    while pos < end:
        match = _TOKEN.match(text, pos)
        if not match:
            raise ConfigError(f"filter {text!r}: cannot parse at position {pos}: {text[pos:]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        start = match.start(kind)
        if kind == "word":
            kind, value = (
                ("keyword", value.lower()) if value.lower() in _KEYWORDS else ("column", value)
            )
        elif kind == "quoted":
            kind, value = "column", value.replace('""', '"')
        elif kind == "string":
            value = value.replace("''", "'")
        tokens.append(_Tok(kind, value, start))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the tokens; records the columns and comparisons it meets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.conditions = 0
        self.columns: list[tuple[str, int]] = []
        self.comparisons: list[_Comparison] = []

    def error(self, message: str) -> ConfigError:
        tok = self.tokens[self.i]
        return ConfigError(f"filter {self.text!r}: {message} at position {tok.pos}")

    def peek(self, kind: str, value: str | None = None) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == kind and (value is None or tok.value == value)

    def take(self, kind: str, value: str | None = None) -> _Tok:
        if not self.peek(kind, value):
            raise self.error(
                f"expected {value or kind}, found {self.tokens[self.i].value or 'end'!r}"
            )
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def enter(self) -> None:
        """One more level of nesting (a parenthesis or a NOT); refuses more than MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested too deeply (more than {MAX_DEPTH} levels)")

    def parse(self) -> pc.Expression:
        expr = self.or_()
        if not self.peek("end"):
            raise self.error(f"unexpected {self.tokens[self.i].value!r}")
        if not isinstance(expr, pc.Expression):
            raise ConfigError(f"filter {self.text!r}: is a constant, not a condition")
        return expr

    def or_(self) -> Any:
        terms = [self.and_()]
        while self.peek("keyword", "or"):
            self.i += 1
            terms.append(self.and_())
        return _balanced(terms, lambda a, b: _expr(a) | _expr(b))

    def and_(self) -> Any:
        terms = [self.not_()]
        while self.peek("keyword", "and"):
            self.i += 1
            terms.append(self.not_())
        return _balanced(terms, lambda a, b: _expr(a) & _expr(b))

    def not_(self) -> Any:
        entered = self.depth
        negations = 0
        while self.peek("keyword", "not"):
            self.i += 1
            self.enter()
            negations += 1
        expr = self.cmp()
        for _ in range(negations):
            expr = ~_expr(expr)
        self.depth = entered
        return expr

    def cmp(self) -> Any:
        start = self.tokens[self.i]
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise self.error(
                f"more than {MAX_CONDITIONS} conditions (use IN (…) for long lists of values)"
            )
        left, left_text = self.operand()
        if self.peek("op") and self.tokens[self.i].value in _COMPARE:
            function = _COMPARE[self.take("op").value]
            right, right_text = self.operand()
            expr = pc.Expression._call(function, [_expr(left), _expr(right)])
            self.comparisons.append(_Comparison(expr, left_text, right_text, start.pos))
            return expr
        if self.peek("keyword", "is"):
            self.i += 1
            negate = self.peek("keyword", "not")
            if negate:
                self.i += 1
            self.take("keyword", "null")
            test = _expr(left).is_null()
            return ~test if negate else test
        negate = False
        if self.peek("keyword", "not") and self.tokens[self.i + 1].value == "in":
            self.i += 1
            negate = True
        if self.peek("keyword", "in"):
            self.i += 1
            self.take("op", "(")
            first = self.i
            values = [self.literal()]
            while self.peek("op", ","):
                self.i += 1
                values.append(self.literal())
            listed = _Operand(f"({self.render(first, self.i)}) ({values[0].type})")
            self.take("op", ")")
            column = _expr(left)
            try:
                found = column.isin(pa.array([v.as_py() for v in values]))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise self.error(f"the values of IN (…) must have one type: {exc}") from None
            self.comparisons.append(_Comparison(found, left_text, listed, start.pos))
            # SQL three-valued logic: NULL IN (…) is NULL, so neither IN nor NOT IN keeps it.
            test = pc.Expression._call(
                "if_else", [column.is_valid(), found, pc.scalar(pa.scalar(None, pa.bool_()))]
            )
            return ~test if negate else test
        return left

    def operand(self) -> tuple[Any, _Operand]:
        start = self.tokens[self.i]
        if self.peek("op", "("):
            self.i += 1
            entered = self.depth
            self.enter()
            inner = self.or_()
            self.take("op", ")")
            self.depth = entered
            return inner, _Operand("(…)")
        if self.peek("column"):
            name = self.take("column").value
            self.columns.append((name, start.pos))
            return pc.field(name), _Operand(f"column {name}", column=name)
        first = self.i
        value = self.literal()
        return value, _Operand(f"{self.render(first, self.i)} ({value.type})")

    def render(self, start: int, end: int) -> str:
        """Tokens ``start:end`` as the user wrote them (quotes restored, keywords upper case)."""
        parts = []
        for tok in self.tokens[start:end]:
            if tok.kind == "string":
                parts.append("'" + tok.value.replace("'", "''") + "'")
            elif tok.kind == "keyword":
                parts.append(tok.value.upper())
            elif tok.kind == "op" and tok.value == ",":
                parts[-1] += ","
            else:
                parts.append(tok.value)
        return " ".join(parts)

    def literal(self) -> pa.Scalar:
        tok = self.tokens[self.i]
        if tok.kind == "number":
            self.i += 1
            if re.fullmatch(r"-?\d+", tok.value):
                number = int(tok.value)
                if not -(2**63) <= number < 2**63:
                    raise self.error(f"integer {tok.value} out of range (64-bit)")
                return pa.scalar(number, pa.int64())
            return pa.scalar(float(tok.value), pa.float64())
        if tok.kind == "string":
            self.i += 1
            return pa.scalar(tok.value, pa.string())
        if tok.kind == "keyword" and tok.value in ("true", "false"):
            self.i += 1
            return pa.scalar(tok.value == "true", pa.bool_())
        if tok.kind == "keyword" and tok.value == "null":
            self.i += 1
            return pa.scalar(None)
        if tok.kind == "keyword" and tok.value == "timestamp":
            self.i += 1
            text = self.take("string").value
            try:
                micros = to_micros(text)
                return pa.scalar(micros, pa.int64()).cast(TIME_TYPE)
            except ConfigError as exc:
                raise self.error(str(exc)) from None
            except (OverflowError, pa.ArrowInvalid):
                raise self.error(f"TIMESTAMP {text!r} out of range") from None
        raise self.error(f"expected a value, found {tok.value or 'end'!r}")


def _balanced(terms: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Combine ``terms`` pairwise into a tree of depth log2(len): AND and OR are associative."""
    while len(terms) > 1:
        paired = [combine(terms[k], terms[k + 1]) for k in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
    return terms[0]


def _expr(value: Any) -> pc.Expression:
    return value if isinstance(value, pc.Expression) else pc.scalar(value)


def parse_filter(text: str) -> pc.Expression:
    """Parse ``text`` (grammar in the module docstring); ConfigError names the position on error."""
    if not text or not text.strip():
        raise ConfigError("filter: empty expression")
    return _Parser(text).parse()


def check_filter(
    condition: str | pc.Expression, schema: pa.Schema, *, source: str = "the input"
) -> pc.Expression:
    """Bind ``condition`` (text or expression) to ``schema``, as the run would; returns it parsed.

    Raises SchemaError naming an unknown column (with the closest match and ``source``'s
    columns) or a comparison of mismatched types (both sides and their types), so a filter that
    would fail on every record fails before anything runs.
    """
    if isinstance(condition, str):
        parser = _Parser(condition) if condition.strip() else None
        if parser is None:
            raise ConfigError("filter: empty expression")
        expr = parser.parse()
        label = f"filter {condition!r}"
        for name, pos in parser.columns:
            if name not in schema.names:
                raise unknown_column(label, name, schema.names, source, f" at position {pos}")
        empty = schema.empty_table()
        for comparison in parser.comparisons:
            try:
                empty.filter(comparison.expr)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise SchemaError(
                    f"{label}: cannot compare {_describe(comparison.left, schema)} with "
                    f"{_describe(comparison.right, schema)} at position {comparison.pos}"
                ) from None
    else:
        expr, label = condition, f"filter {condition}"
    try:
        schema.empty_table().filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        missing = re.search(r"No match for FieldRef\.Name\((.*?)\) in", str(exc))
        if missing:
            raise unknown_column(label, missing.group(1), schema.names, source) from None
        raise SchemaError(f"{label}: {str(exc).splitlines()[0]}") from None
    return expr


def _describe(operand: _Operand, schema: pa.Schema) -> str:
    if operand.column is None:
        return operand.text
    return f"{operand.text} ({schema.field(operand.column).type})"


def unknown_column(
    label: str, name: str, columns: Sequence[str], source: str, where: str = ""
) -> SchemaError:
    """``label: unknown column 'x' (did you mean 'y'?); <source> has columns: …``."""
    close = difflib.get_close_matches(name, list(columns), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SchemaError(
        f"{label}: unknown column {name!r}{where}{hint}; {source} has columns: {', '.join(columns)}"
    )
