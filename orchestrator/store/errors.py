"""The store's error tree, drawn once.

    StoreError                  any failure to read or write durable state; the
    │                           driver's exception (SQLAlchemy) is its __cause__
    ├── StoreClosed             the store was closed, or its writer stopped
    └── DuplicateKey            an insert collided with a unique key
                                (column "idempotency_key" or "job_id")

The orchestrator maps StoreError to the stable code UNAVAILABLE and DuplicateKey on
idempotency_key to IDEMPOTENCY_CONFLICT (or returns the existing job when the specs
match). Nothing in the store speaks gRPC or knows error codes.
"""

from __future__ import annotations


class StoreError(Exception):
    """Durable state could not be read or written."""


class StoreClosed(StoreError):
    """The store is closed (or its writer stopped); nothing was written."""


class DuplicateKey(StoreError):
    """An insert collided with a unique key; nothing was written for that caller.

    `column` is "idempotency_key" or "job_id", `value` the colliding key and
    `existing_job_id` the job that already holds it (None when it cannot be told)."""

    def __init__(self, column: str, value: str, existing_job_id: str | None = None):
        held = f" by {existing_job_id}" if existing_job_id else ""
        super().__init__(f"{column} {value!r} is already taken{held}")
        self.column = column
        self.value = value
        self.existing_job_id = existing_job_id
