"""What makes two submits the same query for athenaq's cache: the cache key.

The key is the SHA-256 of the normalised SQL text, the ExecutionParameters, the
database, the workgroup and the catalog. Normalising must never make two different
queries equal; missing a match only costs a new query. So the text is only cut into its
tokens, by sqlglot's tokenizer in Athena's dialect (Trino's rules, Hive's for DDL), and:

- whitespace and comments between tokens go (`SELECT 1 -- x` is `SELECT  1`);
- Trino's reserved words are upper-cased (`select` is `SELECT`): they can never be an
  unquoted name, so their case never matters;
- every other token is kept as written: string and number literals with their quotes
  and escapes, quoted identifiers, and unquoted names, whose case is kept too (Athena
  folds it, but DuckDB, the local engine, keeps it in result column names).

The SQL is not parsed and generated again: sqlglot's generator rewrites what it reads, and
can write two different queries alike (`DECIMAL '1.5'`, which is 1.5 in Athena, and
`CAST('1.5' AS DECIMAL)`, which is 2, both come out as the latter). The tokens are
checked to cover the text: what lies between two of them must be whitespace and
comments only. A text the tokenizer cannot read (an unterminated string or comment),
with no token, or that fails that check, is keyed by its exact text.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

from sqlglot import TokenType
from sqlglot.dialects.athena import Athena

# Changed whenever the normalisation changes, so keys made before never match keys made
# after (a miss, never a wrong match).
CACHE_KEY_VERSION = 1

# Trino's reserved keywords (https://trino.io/docs/current/language/reserved.html): an
# identifier spelled like one must be quoted, so unquoted they are always keywords.
RESERVED_WORDS = frozenset(
    """
    ALTER AND AS BETWEEN BY CASE CAST CONSTRAINT CREATE CROSS CUBE CURRENT_CATALOG
    CURRENT_DATE CURRENT_PATH CURRENT_ROLE CURRENT_SCHEMA CURRENT_TIME CURRENT_TIMESTAMP
    CURRENT_USER DEALLOCATE DELETE DESCRIBE DISTINCT DROP ELSE END ESCAPE EXCEPT EXECUTE
    EXISTS EXTRACT FALSE FOR FROM FULL GROUP GROUPING HAVING IN INNER INSERT INTERSECT
    INTO IS JOIN JSON_ARRAY JSON_EXISTS JSON_OBJECT JSON_QUERY JSON_TABLE JSON_VALUE
    LEFT LIKE LISTAGG LOCALTIME LOCALTIMESTAMP NATURAL NORMALIZE NOT NULL ON OR ORDER
    OUTER PREPARE RECURSIVE RIGHT ROLLUP SELECT SKIP TABLE THEN TRIM TRUE UESCAPE UNION
    UNNEST USING VALUES WHEN WHERE WITH
    """.split()  # noqa: SIM905 (words as Trino's table lists them)
)

_ATHENA = Athena()
# What may separate two tokens: whitespace, `-- ...` comments to the end of the line and
# `/* ... */` comments (not nested, as Trino reads them). Atomic and possessive, so a
# text that does not match fails at once rather than after trying every split of it.
_BETWEEN_TOKENS = re.compile(r"(?>\s+|--[^\n]*|/\*.*?\*/)*+", re.DOTALL)
# A token that may be keywords: unquoted words only (tokenizers make one token of some
# pairs, `ORDER BY`).
_WORDS = re.compile(r"[A-Za-z_]+(?:\s+[A-Za-z_]+)*")


def normalised_sql(sql: str) -> list[list[str]] | str:
    """`sql` as the list of its tokens, each `[kind, text]`; the text itself when it
    cannot be read as tokens that cover it (see the module's docstring)."""
    try:
        tokens = _ATHENA.tokenize(sql)
    # sqlglot's TokenError, and whatever else hostile text may provoke in the tokenizer:
    # such a text is keyed whole, never refused here.
    except Exception:
        return sql
    normalised: list[list[str]] = []
    position = 0
    for token in tokens:
        kind = token.token_type
        if kind == TokenType.HIVE_TOKEN_STREAM:
            # The dialect's marker that Hive's grammar reads what follows (DDL); no text.
            normalised.append([kind.name, ""])
            continue
        if token.start < position or not _BETWEEN_TOKENS.fullmatch(sql, position, token.start):
            return sql
        text = sql[token.start : token.end + 1]
        position = token.end + 1
        if _WORDS.fullmatch(text):
            words = text.upper().split()
            if all(word in RESERVED_WORDS for word in words):
                text = " ".join(words)
        normalised.append([kind.name, text])
    if not normalised or not _BETWEEN_TOKENS.fullmatch(sql, position):
        return sql
    return normalised


def cache_key(
    sql: str,
    *,
    parameters: Sequence[str] | None,
    database: str,
    workgroup: str,
    catalog: str,
) -> str:
    """The SHA-256, in hex, of what makes two submits the same query for the cache: of the
    normalised SQL's SHA-256 with the parameters, database, workgroup and catalog."""
    document = {
        "version": CACHE_KEY_VERSION,
        "sql": _normalised_digest(sql),
        "parameters": None if parameters is None else list(parameters),
        "database": database,
        "workgroup": workgroup,
        "catalog": catalog,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _normalised_digest(sql: str) -> str:
    """The SHA-256 of `sql` normalised, remembered for the MEMO_SIZE texts seen last.
    Tokenizing is pure Python, some microseconds a token (a millisecond or more for a
    report's SQL of a few KB); a text submitted again and again, as a dashboard's is,
    costs a hash of its bytes instead."""
    exact = hashlib.sha256(sql.encode("utf-8", "surrogatepass")).digest()
    with _MEMO_LOCK:
        known = _MEMO.get(exact)
        if known is not None:
            _MEMO.move_to_end(exact)
            return known
    normalised = json.dumps(normalised_sql(sql), separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(normalised.encode("ascii")).hexdigest()
    with _MEMO_LOCK:
        _MEMO[exact] = digest
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.popitem(last=False)
    return digest


# Texts' digests by the digest of their exact text, least recently used first; keys are
# made on the event loop and on worker threads (long texts), hence the lock.
MEMO_SIZE = 4096
_MEMO: OrderedDict[bytes, str] = OrderedDict()
_MEMO_LOCK = threading.Lock()
