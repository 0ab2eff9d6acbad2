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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError
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


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
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
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

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

    def parse(self) -> pc.Expression:
        expr = self.or_()
        if not self.peek("end"):
            raise self.error(f"unexpected {self.tokens[self.i].value!r}")
        if not isinstance(expr, pc.Expression):
            raise ConfigError(f"filter {self.text!r}: is a constant, not a condition")
        return expr

    def or_(self) -> Any:
        left = self.and_()
        while self.peek("keyword", "or"):
            self.i += 1
            left = left | self.and_()
        return left

    def and_(self) -> Any:
        left = self.not_()
        while self.peek("keyword", "and"):
            self.i += 1
            left = left & self.not_()
        return left

    def not_(self) -> Any:
        if self.peek("keyword", "not"):
            self.i += 1
            return ~self.not_()
        return self.cmp()

    def cmp(self) -> Any:
        left = self.operand()
        if self.peek("op") and self.tokens[self.i].value in _COMPARE:
            function = _COMPARE[self.take("op").value]
            right = self.operand()
            return pc.Expression._call(function, [_expr(left), _expr(right)])
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
            values = [self.literal()]
            while self.peek("op", ","):
                self.i += 1
                values.append(self.literal())
            self.take("op", ")")
            column = _expr(left)
            found = column.isin(pa.array([v.as_py() for v in values]))
            # SQL three-valued logic: NULL IN (…) is NULL, so neither IN nor NOT IN keeps it.
            test = pc.Expression._call(
                "if_else", [column.is_valid(), found, pc.scalar(pa.scalar(None, pa.bool_()))]
            )
            return ~test if negate else test
        return left

    def operand(self) -> Any:
        if self.peek("op", "("):
            self.i += 1
            inner = self.or_()
            self.take("op", ")")
            return inner
        if self.peek("column"):
            return pc.field(self.take("column").value)
        return self.literal()

    def literal(self) -> pa.Scalar:
        tok = self.tokens[self.i]
        if tok.kind == "number":
            self.i += 1
            if re.fullmatch(r"-?\d+", tok.value):
                return pa.scalar(int(tok.value), pa.int64())
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
            except ConfigError as exc:
                raise self.error(str(exc)) from None
            return pa.scalar(micros, pa.int64()).cast(TIME_TYPE)
        raise self.error(f"expected a value, found {tok.value or 'end'!r}")


def _expr(value: Any) -> pc.Expression:
    return value if isinstance(value, pc.Expression) else pc.scalar(value)


def parse_filter(text: str) -> pc.Expression:
    """Parse ``text`` (grammar in the module docstring); ConfigError names the position on error."""
    if not text or not text.strip():
        raise ConfigError("filter: empty expression")
    return _Parser(text).parse()
