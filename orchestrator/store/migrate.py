"""Migrations from the command line (Store.open applies them by itself).

    python -m orchestrator.store.migrate upgrade URL     bring URL to head
    python -m orchestrator.store.migrate current URL     print URL's revision
    python -m orchestrator.store.migrate revision -m "tenants" [--autogenerate URL]

`revision` writes migrations/versions/NNNN_<slug>.py with the next number; with
--autogenerate it diffs schema.py against the database at URL (brought to head
first), which is how a new table should start: edit schema.py, autogenerate, review.
"""

from __future__ import annotations

import argparse

from alembic import command
from alembic.script import ScriptDirectory

from orchestrator.store.engine import alembic_config


def next_revision_id() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return f"{int(head or 0) + 1:04d}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.store.migrate",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("upgrade", "current"):
        sub.add_parser(name).add_argument("url")
    rev = sub.add_parser("revision")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", metavar="URL")
    ns = parser.parse_args(argv)
    if ns.cmd == "upgrade":
        command.upgrade(alembic_config(ns.url), "head")
    elif ns.cmd == "current":
        command.current(alembic_config(ns.url), verbose=True)
    else:
        cfg = alembic_config(ns.autogenerate)
        if ns.autogenerate:
            command.upgrade(cfg, "head")
        command.revision(cfg, ns.message, autogenerate=bool(ns.autogenerate),
                         rev_id=next_revision_id())


if __name__ == "__main__":
    main()
