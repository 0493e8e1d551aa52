"""Alembic migrations for the store (applied by Store.open; see engine.migrate)."""
