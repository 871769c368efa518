"""The kinds of statement a SQL text would run, read by parsing it as Athena does.

Athena routes a statement to one of two engines: Trino for queries and DML, Hive for
most DDL. sqlglot's `athena` dialect makes the same choice and parses with that engine's
grammar, so a kind here is decided by the statement's parse tree, never by its first
word: comments, string literals and quoted identifiers cannot disguise a statement, and
`WITH ... INSERT` is the write it is.
"""

from __future__ import annotations

import logging
import re

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.dialects.athena import Athena

from athenaq import errors

# The statements Athena runs, by the word a key's `--statements` names them with.
# EXECUTE runs whatever a PREPARE stored, so a key allowed both may run any kind.
KNOWN_KINDS: frozenset[str] = frozenset(
    {
        "SELECT",
        "WITH",
        "VALUES",
        "SHOW",
        "DESCRIBE",
        "EXPLAIN",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "UNLOAD",
        "CREATE",
        "DROP",
        "ALTER",
        "MSCK",
        "OPTIMIZE",
        "VACUUM",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
        # A query calling Lambda functions declared in its USING EXTERNAL FUNCTION clause.
        "USING",
        "USE",
        "SET",
    }
)

# Reads that change nothing; what a key made without `--statements` may run by default.
DEFAULT_STATEMENTS: frozenset[str] = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN"})

# Parsing is pure Python and costs some microseconds a token; a bound keeps the check of
# the largest text Athena accepts (262,144 bytes) within a fraction of a second. It counts
# words and symbols everywhere, in strings and comments too: a count no quoting or escape
# can make smaller than the tokens the parser will see (at most two a word: `1a`), which
# a quote-aware count could, as each engine quotes and escapes its own way. Texts over it
# are refused as unreadable, never passed unchecked.
MAX_WORDS = 20_000
_WORDS = re.compile(r"\w+|\S")

# EXPLAIN EXPLAIN ... re-reads the rest of the text at each level.
_MAX_EXPLAIN_DEPTH = 2

_PARSED_KINDS: dict[type[exp.Expr], str] = {
    exp.Values: "VALUES",
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
    exp.Create: "CREATE",
    exp.Drop: "DROP",
    exp.Alter: "ALTER",
    exp.Describe: "DESCRIBE",
    exp.Show: "SHOW",
    exp.Use: "USE",
    exp.Set: "SET",
}

# Statements that change something, wherever they sit in a tree: the dialect may accept
# a write nested in a query (a data-modifying CTE) that must not pass as a read.
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter)

_ATHENA = Athena()

# sqlglot logs a warning each time it keeps a statement it has no grammar for (SHOW,
# EXPLAIN, UNLOAD, MSCK ...) as a raw command; those are expected here and classified.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


class UnreadableStatement(ValueError):
    """The text is not SQL that Athena's grammars read as statements of known kinds."""


def statement_kinds(sql: str) -> list[str]:
    """The kinds of the statements in `sql`, in order.

    A statement that runs another (EXPLAIN ANALYZE) yields its own kind and the other's;
    a write nested anywhere in a statement adds the write's kind. Raises
    UnreadableStatement when the text does not parse or holds no statement.
    """
    return [kind for kinds in _kinds_by_statement(sql) for kind in kinds]


def check_statement(sql: str, allowed: frozenset[str] | None) -> None:
    """Refuse `sql` unless it is one statement whose every kind is in `allowed`.

    `allowed` None means any kind, and the text goes to Athena unchecked, read or not.
    Raises errors.StatementNotAllowed.
    """
    if allowed is None:
        return
    try:
        statements = _kinds_by_statement(sql)
    except UnreadableStatement as exc:
        raise errors.StatementNotAllowed(f"the SQL could not be read: {exc}") from exc
    if len(statements) > 1:
        raise errors.StatementNotAllowed(
            f"the SQL holds {len(statements)} statements; submit one statement at a time"
        )
    for kind in statements[0]:
        if kind not in allowed:
            raise errors.StatementNotAllowed(
                f"{kind} statements are not allowed for this key"
                f" (allowed: {', '.join(sorted(allowed)) or 'none'})"
            )


def _kinds_by_statement(sql: str) -> list[list[str]]:
    if sum(1 for _ in _WORDS.finditer(sql)) > MAX_WORDS:
        raise UnreadableStatement(
            f"the text holds over {MAX_WORDS} words and symbols, too many to check"
        )
    try:
        statements = [_kinds_of(statement, depth=0) for statement in _parse(sql)]
    except UnreadableStatement:
        raise
    # sqlglot's ParseError and TokenError, RecursionError when nesting outruns the
    # recursive-descent parser, and whatever else hostile text may provoke in it: a text
    # that cannot be classified is refused, never an internal error.
    except Exception as exc:
        raise UnreadableStatement(_first_line(exc)) from exc
    if not statements:
        raise UnreadableStatement("the text holds no statement")
    return statements


def _parse(sql: str) -> list[exp.Expr]:
    """The statements of `sql`; empty ones (after a trailing `;`, or only comments) left out."""
    parsed = sqlglot.parse(sql, read=_ATHENA)
    return [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]


def _kinds_of(statement: exp.Expr, depth: int) -> list[str]:
    if isinstance(statement, exp.Command):
        return _command_kinds(statement, depth)
    kinds = [_root_kind(statement)]
    for node in statement.walk():
        kind = _parsed_kind(node) if isinstance(node, _WRITES) else None
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    return kinds


def _root_kind(statement: exp.Expr) -> str:
    while isinstance(statement, exp.Subquery):
        statement = statement.this
    if isinstance(statement, exp.Select | exp.SetOperation):
        return "WITH" if statement.args.get("with_") else "SELECT"
    kind = _parsed_kind(statement)
    if kind is None:
        raise UnreadableStatement(f"{type(statement).__name__} is not a statement Athena runs")
    return kind


def _parsed_kind(node: exp.Expr) -> str | None:
    return next((kind for cls, kind in _PARSED_KINDS.items() if isinstance(node, cls)), None)


def _command_kinds(command: exp.Command, depth: int) -> list[str]:
    """Kinds of a statement sqlglot kept as a raw command: its keyword, then its text."""
    keyword = str(command.this).upper().split()[0]
    rest = command.expression
    text = rest.name if isinstance(rest, exp.Expr) else str(rest or "")
    if keyword == "EXPLAIN":
        return _explain_kinds(text, depth)
    if keyword not in KNOWN_KINDS:
        raise UnreadableStatement(f"{keyword} is not a statement Athena runs")
    return [keyword]


def _explain_kinds(text: str, depth: int) -> list[str]:
    """EXPLAIN only plans its statement; EXPLAIN ANALYZE also runs it."""
    if depth >= _MAX_EXPLAIN_DEPTH:
        raise UnreadableStatement("EXPLAIN is nested too deep")
    # The marker the dialect puts before a text it hands to the Hive grammar is no word.
    tokens = [t for t in _ATHENA.tokenize(text) if t.token_type != TokenType.HIVE_TOKEN_STREAM]
    words = [token.text.upper() for token in tokens]
    analyze = bool(words) and words[0] == "ANALYZE"
    index = 1 if analyze else 0
    if index < len(words) and words[index] == "VERBOSE":
        index += 1
    # EXPLAIN (FORMAT JSON, TYPE DISTRIBUTED) ...; a `(` that opens a query is no option list.
    if index + 1 < len(words) and words[index] == "(" and words[index + 1] in ("FORMAT", "TYPE"):
        index = words.index(")", index) + 1 if ")" in words[index:] else len(words)
    if index >= len(tokens):
        raise UnreadableStatement("EXPLAIN names no statement")
    inner = _parse(text[tokens[index].start :])
    if len(inner) != 1:
        raise UnreadableStatement("EXPLAIN names no single statement")
    explained = _kinds_of(inner[0], depth + 1)
    return ["EXPLAIN", *explained] if analyze else ["EXPLAIN"]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
