"""The cache key: what it takes as the same query, and what it never does."""

from __future__ import annotations

import pytest

from athenaq import cachekey
from athenaq.cachekey import cache_key, normalised_sql


def key(sql: str, **context: object) -> str:
    given: dict[str, object] = {
        "parameters": None,
        "database": "default",
        "workgroup": "primary",
        "catalog": "AwsDataCatalog",
        **context,
    }
    return cache_key(sql, **given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Whitespace, line ends and tabs between tokens.
        ("SELECT a, b FROM t WHERE x = 1", "SELECT  a,b\n\tFROM t\r\nWHERE x=1  "),
        # Comments, of both kinds, anywhere between tokens (the test double's scripts too).
        ("SELECT a FROM t", "-- report\nSELECT /* the column */ a FROM t -- trailing"),
        ('SELECT 1 -- double: {"hold": true}', 'SELECT 1 -- double: {"run_ms": 5}'),
        # Reserved words in any case, and a keyword of two words however spaced.
        ("SELECT a FROM t ORDER BY a", "select a from t order\n  by a"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "with x as (select 1) select * from x"),
        # `--1` starts a comment, for Athena too.
        ("SELECT 1--1", "SELECT 1"),
        # DDL, read with Hive's rules.
        (
            "CREATE EXTERNAL TABLE t (a string) LOCATION 's3://b/p/'",
            "CREATE EXTERNAL TABLE t (a string)\n  LOCATION 's3://b/p/' -- made by hand",
        ),
    ],
)
def test_texts_that_differ_only_in_spacing_comments_or_keyword_case_are_one_query(
    first: str, second: str
) -> None:
    assert key(first) == key(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Literals, and what looks like a comment or a keyword inside them.
        ("SELECT 'a'", "SELECT 'b'"),
        ("SELECT 'a b'", "SELECT 'a  b'"),
        ("SELECT 'A'", "SELECT 'a'"),
        ("SELECT '-- x'", "SELECT '-- y'"),
        ("SELECT '/* x */'", "SELECT '/* y */'"),
        ("SELECT 'select'", "SELECT 'SELECT'"),
        ("SELECT 1", "SELECT 2"),
        ("SELECT 1.0", "SELECT 1.00"),
        ("SELECT 1.5", "SELECT 1 . 5"),
        # Athena reads these two differently (1.5 and 2); a parser's rewrite writes both
        # as the second.
        ("SELECT DECIMAL '1.5'", "SELECT CAST('1.5' AS DECIMAL)"),
        ("SELECT TIMESTAMP '2026-01-01 00:00:00.123'", "SELECT TIMESTAMP '2026-01-01 00:00:00'"),
        # Quoted identifiers keep their case; so do unquoted names (the local engine
        # keeps it in column names).
        ('SELECT "A" FROM t', 'SELECT "a" FROM t'),
        ('SELECT 1 AS "x y"', 'SELECT 1 AS "x  y"'),
        ("SELECT 1 AS Answer", "SELECT 1 AS answer"),
        ("SELECT a FROM T", "SELECT a FROM t"),
        # Operators made of two characters, or of two tokens.
        ("SELECT a >= b FROM t", "SELECT a > = b FROM t"),
        ("SELECT 1 - -1", "SELECT 1 --1"),
        # Placeholders are part of the text; a trailing semicolon too.
        ("SELECT ?", "SELECT 1"),
        ("SELECT 1", "SELECT 1;"),
        # Strings Hive reads alike, kept as written.
        ("CREATE TABLE t (a string) COMMENT 'x'", 'CREATE TABLE t (a string) COMMENT "x"'),
        # Texts the tokenizer cannot read are keyed by their exact text.
        ("SELECT 'unterminated", "SELECT  'unterminated"),
        ("SELECT 1 /* unterminated", "SELECT  1 /* unterminated"),
        ("-- only a comment", "-- only another comment"),
    ],
)
def test_texts_that_may_differ_in_meaning_are_different_queries(first: str, second: str) -> None:
    assert key(first) != key(second)


@pytest.mark.parametrize(
    "context",
    [
        {"parameters": ("1",)},
        {"parameters": ()},
        {"database": "sales"},
        {"workgroup": "analysts"},
        {"catalog": "lakehouse"},
    ],
)
def test_parameters_database_workgroup_and_catalog_are_part_of_the_key(
    context: dict[str, object],
) -> None:
    assert key("SELECT ?", **context) != key("SELECT ?")
    assert key("SELECT ?", **context) == key("select  ? -- again", **context)


def test_parameters_are_compared_one_by_one_in_order() -> None:
    assert key("SELECT ?, ?", parameters=("a", "b")) != key("SELECT ?, ?", parameters=("b", "a"))
    assert key("SELECT ?", parameters=("a,b",)) != key("SELECT ?", parameters=("a", "b"))
    assert key("SELECT ?", parameters=("'x'",)) != key("SELECT ?", parameters=("x",))
    assert key("SELECT ?", parameters=("x",)) == key("SELECT ?", parameters=["x"])


def test_the_key_is_sha256_hex() -> None:
    made = key("SELECT 1")
    assert len(made) == 64 and set(made) <= set("0123456789abcdef")


def test_normalised_tokens_keep_literals_as_written() -> None:
    assert normalised_sql("select  'it''s', \"Q\" -- c\n from t") == [
        ["SELECT", "SELECT"],
        ["STRING", "'it''s'"],
        ["COMMA", ","],
        ["IDENTIFIER", '"Q"'],
        ["FROM", "FROM"],
        ["VAR", "t"],
    ]
    # A nested comment ends at its first `*/`, as in Athena: what follows is SQL.
    assert normalised_sql("SELECT 1 /* a /* b */ c */") == [
        ["SELECT", "SELECT"],
        ["NUMBER", "1"],
        ["VAR", "c"],
        ["STAR", "*"],
        ["SLASH", "/"],
    ]


def test_the_largest_text_athena_takes_is_keyed() -> None:
    sql = "SELECT " + ", ".join(f"c{i} + 'v{i}'" for i in range(20_000))
    sql = sql[: sql.rindex(",", 0, 262_144)]
    assert key(sql) == key(sql + "  -- end")


def test_the_digests_remembered_are_bounded() -> None:
    for n in range(cachekey.MEMO_SIZE + 10):
        key(f"SELECT {n}")
    assert len(cachekey._MEMO) == cachekey.MEMO_SIZE
    # Remembered or not, a text has one key.
    assert key("SELECT 0") == key("SELECT  0") != key("SELECT 1")
