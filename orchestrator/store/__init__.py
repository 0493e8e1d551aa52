"""The orchestrator's durable state: SQLAlchemy 2 (async) on SQLite or PostgreSQL.

Public surface: Store, JobRow, url_for_data_dir and the errors. See store.py for the
contracts, writer.py for group commit, schema.py for the tables, migrations/ for
their history (applied by Store.open).
"""

from orchestrator.store.errors import DuplicateKey, StoreClosed, StoreError
from orchestrator.store.rows import UNFINISHED, JobRow
from orchestrator.store.store import Store, url_for_data_dir

__all__ = ["DuplicateKey", "JobRow", "Store", "StoreClosed", "StoreError", "UNFINISHED",
           "url_for_data_dir"]
