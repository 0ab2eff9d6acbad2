"""Text filters (``--where``, job files) agree with DuckDB SQL on the same rows."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.errors import ConfigError
from lambdasource.expressions import parse_filter

TABLE = pa.table(
    {
        "n": pa.array([1, 2, 3, None, 5, -1], pa.int64()),
        "x": pa.array([0.5, None, 2.5, 3.0, -1.0, 0.0], pa.float64()),
        "kind": pa.array(["click", "view", None, "buy", "click", "it's"], pa.string()),
        "ok": pa.array([True, False, None, True, False, True], pa.bool_()),
        "ts": pa.array(
            [0, 3_600_000_000, None, 7_200_000_000, 10**10, 1], pa.timestamp("us", tz="UTC")
        ),
    }
)

columns = {
    "n": st.integers(-2, 6).map(str),
    "x": st.sampled_from(["0.5", "2.5", "-1.0", "3"]),
    "kind": st.sampled_from(["'click'", "'view'", "'it''s'", "'zzz'"]),
    "ts": st.sampled_from(["TIMESTAMP '1970-01-01T01:00:00'", "TIMESTAMP '1970-01-01 00:00:00'"]),
}


@st.composite
def comparison(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(sorted(columns)))
    kind = draw(st.sampled_from(["cmp", "null", "in"]))
    if kind == "null":
        return f"{column} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    if kind == "in":
        values = draw(st.lists(columns[column], min_size=1, max_size=3))
        return f"{column} {draw(st.sampled_from(['', 'NOT ']))}IN ({', '.join(values)})"
    op = draw(st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="]))
    return f"{column} {op} {draw(columns[column])}"


conditions = st.recursive(
    comparison(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda c: f"NOT ({c})"),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(conditions)
def test_filters_match_duckdb(text: str) -> None:
    ours = TABLE.filter(parse_filter(text)).column("n").to_pylist()
    con = duckdb.connect()
    con.register("t", TABLE)
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(
        f"SELECT n FROM (SELECT row_number() OVER () AS i, * FROM t) WHERE {text} ORDER BY i"
    ).fetchall()
    assert ours == [r[0] for r in rows], text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty expression"),
        ("kind = ", "expected a value"),
        ("n >> 2", "expected a value"),
        ("kind = 'a", "cannot parse at position"),
        ("(n = 1", r"expected \)"),
        ("n = 1 n", "unexpected"),
        ("ts > TIMESTAMP 'yesterday'", "cannot parse time"),
    ],
)
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_filter(text)


def test_quoted_columns_and_booleans() -> None:
    expr = parse_filter('"ok" = TRUE AND "kind" = \'click\'')
    assert TABLE.filter(expr).column("n").to_pylist() == [1]
