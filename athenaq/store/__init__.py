"""The metadata store: every query and its transition history, in MySQL/MariaDB or SQLite.

All SQL of the service lives in this package: the tables (tables.py), opening the
database and its transactions (database.py), the schema's revisions (schema.py and
migrations/) and the queries' reads and writes (queries.py).
"""

from athenaq.store.queries import Store
from athenaq.store.schema import SchemaChange, SchemaError

__all__ = ["SchemaChange", "SchemaError", "Store"]
