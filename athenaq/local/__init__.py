"""athenaq-local: an Athena-compatible endpoint that runs real SQL with DuckDB.

One HTTP server speaks Athena JSON 1.1 (`POST /`) and S3 GetObject/HeadObject in
path style (`GET|HEAD /<bucket>/<key>`), so one URL serves as both endpoints.
Where it departs from AWS:

- SQL is DuckDB's, on one in-memory database shared by all queries (a table one
  query creates is there for the next, until the engine stops).
  `QueryExecutionContext.Database` is echoed back but does not change name resolution;
  the Catalog does (AwsDataCatalog is DuckDB's own database, another name a database
  attached under it; an unknown one fails the query).
- ExecutionParameters are literals bound to DuckDB's prepared statement; DuckDB casts a
  bound value to the type its place needs where Athena wants the types to match, and
  takes `?` anywhere (Athena: in WHERE), literals only (Athena: constant expressions).
- Result reuse matches Athena's: same SQL, parameters, database, catalog, workgroup and
  result folder, within MaxAgeInMinutes, queries only.
- `DataScannedInBytes` is the size of the result CSV: nothing is read from S3.
- Values are written in Athena's text forms: `true`/`false`, plain integers,
  doubles as Python's repr (`NaN`, `Infinity`), decimals in fixed point, dates
  `YYYY-MM-DD`, timestamps `YYYY-MM-DD HH:MM:SS.fff`, varbinary as spaced hex,
  arrays `[a, b]`, maps and structs `{k=v}`; DuckDB types without an Athena
  counterpart are reported as varchar.
- A stop asked while a query is RUNNING always ends it CANCELLED.
- S3 ETags identify a file version (inode, size, mtime), they are not MD5 sums;
  query history lives in memory only.

DuckDB is the optional extra `athenaq[local]`; importing this package without it
raises ImportError saying so.
"""

from athenaq.local.server import LocalEngine

__all__ = ["LocalEngine"]
