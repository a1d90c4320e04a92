"""Alembic environment and revisions of the catalog schema (run by ``open_database``)."""
