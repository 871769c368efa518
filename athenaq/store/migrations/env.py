"""Alembic's entry point: runs the revisions on the connection the store hands over.

The store holds the schema lock on that connection (MySQL's GET_LOCK, SQLite's write
transaction) and ends it; this file only runs the revisions inside it."""

from alembic import context

from athenaq.store.tables import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    # SQLite alters most of a table only by copying it: autogenerate writes such steps as
    # batch operations, which do that on SQLite and plain ALTERs on MySQL/MariaDB.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
