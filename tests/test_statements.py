"""Statement kinds, read by parsing SQL in Athena's dialects (athenaq.statements)."""

from __future__ import annotations

import random

import pytest

from athenaq import errors
from athenaq.schemas import MAX_QUERY_BYTES
from athenaq.statements import (
    DEFAULT_STATEMENTS,
    KNOWN_KINDS,
    MAX_WORDS,
    UnreadableStatement,
    check_statement,
    statement_kinds,
)

KINDS = [
    ("SELECT * FROM t", ["SELECT"]),
    ("-- why\n-- because\nSELECT 1", ["SELECT"]),
    ("/* a\n block */ SELECT 1 /* after */", ["SELECT"]),
    ("-- DROP TABLE t\nSELECT 1", ["SELECT"]),
    ("WITH a AS (SELECT 1 AS x) SELECT x FROM a", ["WITH"]),
    ("WITH a AS (SELECT 1 AS x) INSERT INTO t SELECT x FROM a", ["INSERT"]),
    ("INSERT INTO t WITH a AS (SELECT 1 AS x) SELECT x FROM a", ["INSERT"]),
    ("INSERT INTO t SELECT * FROM s", ["INSERT"]),
    ("INSERT INTO t VALUES (1, 'a')", ["INSERT"]),
    ("UNLOAD (SELECT * FROM t) TO 's3://b/p/' WITH (format = 'PARQUET')", ["UNLOAD"]),
    ("CREATE TABLE t AS SELECT * FROM s", ["CREATE"]),
    ("CREATE TABLE t WITH (format = 'PARQUET') AS SELECT 1 AS x", ["CREATE"]),
    (
        "CREATE EXTERNAL TABLE IF NOT EXISTS `db`.`t` (`a` int, b string)"
        " PARTITIONED BY (dt string) ROW FORMAT DELIMITED FIELDS TERMINATED BY ','"
        " LOCATION 's3://b/p/' TBLPROPERTIES ('skip.header.line.count' = '1')",
        ["CREATE"],
    ),
    ("CREATE VIEW v AS SELECT 1 AS x", ["CREATE"]),
    ("CREATE DATABASE d", ["CREATE"]),
    ("MSCK REPAIR TABLE t", ["MSCK"]),
    ("msck repair table t", ["MSCK"]),
    ("EXPLAIN SELECT * FROM t", ["EXPLAIN"]),
    ("EXPLAIN INSERT INTO t SELECT 1", ["EXPLAIN"]),
    ("EXPLAIN (FORMAT JSON, TYPE DISTRIBUTED) SELECT 1", ["EXPLAIN"]),
    ("EXPLAIN (SELECT 1)", ["EXPLAIN"]),
    ("EXPLAIN ANALYZE SELECT * FROM t", ["EXPLAIN", "SELECT"]),
    ("EXPLAIN /* why */ ANALYZE VERBOSE SELECT 1", ["EXPLAIN", "SELECT"]),
    ("EXPLAIN ANALYZE INSERT INTO t SELECT 1", ["EXPLAIN", "INSERT"]),
    ("EXPLAIN ANALYZE WITH a AS (SELECT 1) SELECT * FROM a", ["EXPLAIN", "WITH"]),
    ("EXPLAIN ANALYZE (FORMAT JSON) INSERT INTO t SELECT 1", ["EXPLAIN", "INSERT"]),
    ("EXPLAIN SHOW TABLES", ["EXPLAIN"]),
    ("SHOW TABLES", ["SHOW"]),
    ("SHOW CREATE TABLE t", ["SHOW"]),
    ("SHOW PARTITIONS t", ["SHOW"]),
    ("DESCRIBE t", ["DESCRIBE"]),
    ("DESCRIBE FORMATTED db.t", ["DESCRIBE"]),
    ("DROP TABLE t", ["DROP"]),
    ("DROP TABLE IF EXISTS `db`.`t`", ["DROP"]),
    ("ALTER TABLE t ADD COLUMNS (c string, d int)", ["ALTER"]),
    ("ALTER TABLE t ADD PARTITION (dt = '2024-01-01') LOCATION 's3://b/p/'", ["ALTER"]),
    ("ALTER DATABASE d SET DBPROPERTIES ('k' = 'v')", ["ALTER"]),
    ("UPDATE t SET a = 1 WHERE b = 2", ["UPDATE"]),
    ("DELETE FROM t WHERE a = 1", ["DELETE"]),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", ["MERGE"]),
    ("VALUES (1, 'a'), (2, 'b')", ["VALUES"]),
    ("SELECT 1 UNION ALL SELECT 2", ["SELECT"]),
    ("WITH a AS (SELECT 1) SELECT 1 UNION SELECT 2", ["WITH"]),
    ("SELECT * FROM (WITH a AS (SELECT 1) SELECT * FROM a)", ["SELECT"]),
    ("CREATE TABLE t AS WITH a AS (SELECT 1) SELECT * FROM a", ["CREATE"]),
    ("(SELECT 1)", ["SELECT"]),
    ("PREPARE p FROM SELECT * FROM t WHERE a = ?", ["PREPARE"]),
    ("EXECUTE p USING 1", ["EXECUTE"]),
    ("DEALLOCATE PREPARE p", ["DEALLOCATE"]),
    ("OPTIMIZE t REWRITE DATA USING BIN_PACK", ["OPTIMIZE"]),
    ("VACUUM t", ["VACUUM"]),
    ("USE db", ["USE"]),
    ("SELECT 1; DROP TABLE t", ["SELECT", "DROP"]),
    ("SHOW TABLES; DROP TABLE t", ["SHOW", "DROP"]),
    ("EXPLAIN SELECT 1; DROP TABLE t", ["EXPLAIN", "DROP"]),
    ("UNLOAD (SELECT ';') TO 's3://b/p/'; DROP TABLE t", ["UNLOAD", "DROP"]),
    ("SELECT 1; CREATE EXTERNAL TABLE t (a int) LOCATION 's3://b/'", ["SELECT", "CREATE"]),
    ("SELECT 1;", ["SELECT"]),
    ("SELECT 1 ; -- done\n", ["SELECT"]),
    ("SELECT 1 -- ; DROP TABLE t", ["SELECT"]),
    ("SELECT 1 /* ; DROP TABLE t */", ["SELECT"]),
    ("SELECT 'x; DROP TABLE t' AS s", ["SELECT"]),
    ("SELECT 'it''s; DROP TABLE t' AS s", ["SELECT"]),
    ('SELECT "drop", "insert" FROM "delete" WHERE "update" = 1', ["SELECT"]),
    ("CREATE EXTERNAL TABLE t (`select` int, `drop` string) LOCATION 's3://b/'", ["CREATE"]),
    ("select * from t", ["SELECT"]),
    ("wItH a AS (sElEcT 1) SeLeCt * FrOm a", ["WITH"]),
    ("InSeRt InTo t SeLeCt 1", ["INSERT"]),
]


@pytest.mark.parametrize(("sql", "kinds"), KINDS)
def test_kinds(sql: str, kinds: list[str]) -> None:
    assert statement_kinds(sql) == kinds
    assert set(kinds) <= KNOWN_KINDS


UNREADABLE = [
    "garbage !!",
    "SELEC 1",
    "SELECT FROM WHERE",
    "",
    "   ",
    ";",
    "-- a comment and nothing else",
    "SELECT 'unterminated",
    # Trino reads no backslash escape: the string ends at `\'`, leaving a stray quote.
    "SELECT 'a\\'; DROP TABLE t'",
    "1 + 1",
    "TRUNCATE TABLE t",
    "EXPLAIN",
    "EXPLAIN EXPLAIN EXPLAIN SELECT 1",
    "SELECT " + "(" * 5000 + "1" + ")" * 5000,
    "SELECT " + "NOT " * 5000 + "1",
    "SELECT * FROM " + "(SELECT * FROM " * 2000 + "t" + ")" * 2000,
]


@pytest.mark.parametrize("sql", UNREADABLE, ids=lambda sql: sql[:30])
def test_unreadable(sql: str) -> None:
    with pytest.raises(UnreadableStatement):
        statement_kinds(sql)


def test_fuzz_raises_only_unreadable() -> None:
    rng = random.Random(8)
    words = ["SELECT", "(", ")", "'", '"', "`", ";", "--", "/*", "*/", "WITH", "AS", "INSERT"]
    texts = [
        "SELECT '\ud800'",
        "\ud800\udfff\x00",
        "SELECT \x00 FROM t",
        *(bytes(rng.randrange(256) for _ in range(200)).decode("latin-1") for _ in range(100)),
        *(" ".join(rng.choice(words) for _ in range(30)) for _ in range(200)),
    ]
    for text in texts:
        try:
            kinds = statement_kinds(text)
        except UnreadableStatement:
            continue
        assert kinds and set(kinds) <= KNOWN_KINDS, text


def test_the_largest_queries_are_refused_or_parsed_within_the_bound() -> None:
    # The densest text Athena accepts: one token a byte, all of it past the bound, is
    # refused before it is parsed (how long a parse at the bound takes is a benchmark's
    # figure, not a test's: a shared machine's load decides the time).
    dense = ("SELECT " + "1," * MAX_QUERY_BYTES)[: MAX_QUERY_BYTES - 1] + "1"
    with pytest.raises(UnreadableStatement, match="too many to check"):
        statement_kinds(dense)
    # The most a text may hold and still be parsed: the bound, in one dense expression.
    largest = "SELECT " + "+".join(["1"] * ((MAX_WORDS - 1) // 2))
    assert statement_kinds(largest) == ["SELECT"]


def test_any_kind_passes_anything_unchecked() -> None:
    for sql in ("DROP TABLE t", "SELECT 1; DROP TABLE t", "garbage !!", ""):
        check_statement(sql, None)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "SHOW TABLES",
        "DESCRIBE t",
        "EXPLAIN INSERT INTO t SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        "SELECT 1;",
    ],
)
def test_default_set_allows_reads(sql: str) -> None:
    check_statement(sql, DEFAULT_STATEMENTS)


ALLOWED = "DESCRIBE, EXPLAIN, SELECT, SHOW, WITH"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "INSERT INTO t SELECT 1",
            f"INSERT statements are not allowed for this key (allowed: {ALLOWED})",
        ),
        ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "INSERT statements are not allowed"),
        (
            "UNLOAD (SELECT 1) TO 's3://b/p/' WITH (format = 'PARQUET')",
            "UNLOAD statements are not allowed",
        ),
        ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
        ("MSCK REPAIR TABLE t", "MSCK statements are not allowed"),
        ("EXPLAIN ANALYZE INSERT INTO t SELECT 1", "INSERT statements are not allowed"),
        ("VALUES 1", "VALUES statements are not allowed"),
        ("SELECT 1; DROP TABLE t", "the SQL holds 2 statements"),
        ("SELECT 1; SELECT 2; SELECT 3", "the SQL holds 3 statements"),
        ("garbage !!", "the SQL could not be read"),
        ("", "the SQL could not be read: the text holds no statement"),
    ],
)
def test_default_set_refuses(sql: str, message: str) -> None:
    with pytest.raises(errors.StatementNotAllowed) as refused:
        check_statement(sql, DEFAULT_STATEMENTS)
    assert message in refused.value.message
    assert refused.value.status == 403
    assert refused.value.code == "statement_not_allowed"


def test_a_wider_set_allows_its_kinds() -> None:
    check_statement("EXPLAIN ANALYZE INSERT INTO t SELECT 1", frozenset({"EXPLAIN", "INSERT"}))
    check_statement("CREATE TABLE t AS SELECT 1", frozenset({"CREATE"}))
    with pytest.raises(errors.StatementNotAllowed, match="SELECT statements are not allowed"):
        check_statement("SELECT 1", frozenset({"INSERT"}))
    with pytest.raises(errors.StatementNotAllowed, match=r"\(allowed: none\)"):
        check_statement("SELECT 1", frozenset())
