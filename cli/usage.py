"""`llama-orch usage`: billing exports and provider earnings, straight from the store.

    llama-orch usage export [--tenant T] [--from WHEN] [--to WHEN] [--format csv|json]
                                        the usage records of jobs finished in [from, to)
                                        and each tenant's totals (orchestrator/usage.py)
    llama-orch usage earnings [--from WHEN] [--to WHEN] [--format csv|json]
                              [--price-per-1k-tokens P] [--price-per-gib-hour Q]
                                        per pool and provider: jobs, tokens, VRAM

Like `llama-orch keys`, these read the orchestrator's store directly (--config FILE,
or --database URL), so they work whether or not the orchestrator runs, and have no
size limit (AdminService.ExportUsage answers at most 50 000 records). --tenant takes
a tenant id or name; without it every tenant is exported. WHEN is an ISO 8601 date or
date-time (without a zone: UTC), e.g. 2026-03-01 or 2026-03-01T12:00:00+02:00, or
epoch seconds; no --from: from the beginning; no --to: up to now. Output goes to
stdout (or --output FILE).

Earnings are quantities; with prices, an `amount` column is added, in whatever
currency the prices are in:
    amount = (prompt + completion tokens) / 1000 x P + vram_byte_seconds / (GiB x 3600) x Q
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from common import config as config_mod
from common.errors import OrchError
from orchestrator import usage
from orchestrator.store import Store, StoreError, url_for_data_dir
from orchestrator.store.store import EarningRow

GIB_HOUR = float(1 << 30) * 3600


def parse_when(text: str) -> float:
    """ISO 8601 date or date-time (naive: UTC), or epoch seconds -> epoch seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date, date-time or epoch seconds: {text!r}") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="the orchestrator's TOML config (where its store is)")
    common.add_argument("--database", help="store URL (overrides the config)")
    common.add_argument("--from", dest="start", type=parse_when, default=0.0,
                        help="first instant included (ISO 8601 or epoch seconds)")
    common.add_argument("--to", dest="end", type=parse_when, default=0.0,
                        help="first instant excluded (default: now)")
    common.add_argument("--format", choices=usage.FORMATS, default="json")
    common.add_argument("--output", help="write here instead of stdout")
    parser = argparse.ArgumentParser(prog="llama-orch usage", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", parents=[common], help="billing export")
    export.add_argument("--tenant", default="", help="tenant id or name (default: all)")
    earnings = verbs.add_parser("earnings", parents=[common], help="provider earnings")
    earnings.add_argument("--price-per-1k-tokens", type=float, default=None)
    earnings.add_argument("--price-per-gib-hour", type=float, default=None)
    return parser


def render_earnings(rows: list[EarningRow], fmt: str, per_1k_tokens: float | None = None,
                    per_gib_hour: float | None = None) -> str:
    """The earnings ledger as csv or json; `amount` only when a price is given."""
    priced = per_1k_tokens is not None or per_gib_hour is not None
    out = []
    for r in rows:
        tokens = r.prompt_tokens + r.completion_tokens
        item = {"pool_id": r.pool_id, "provider_id": r.provider_id, "jobs": r.jobs,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "tokens": tokens, "vram_byte_seconds": r.vram_byte_seconds}
        if priced:
            item["amount"] = round(tokens / 1000 * (per_1k_tokens or 0.0)
                                   + r.vram_byte_seconds / GIB_HOUR * (per_gib_hour or 0.0), 6)
        out.append(item)
    if fmt == "json":
        return json.dumps({"earnings": out}, indent=1)
    buf = io.StringIO()
    columns = ["pool_id", "provider_id", "jobs", "prompt_tokens", "completion_tokens", "tokens",
               "vram_byte_seconds"] + (["amount"] if priced else [])
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(out)
    return buf.getvalue()


def _url(ns: argparse.Namespace) -> str:
    if ns.database:
        return ns.database
    cfg = config_mod.load(ns.config)
    return cfg.orchestrator.database or url_for_data_dir(cfg.data_dir)


async def _tenant_id(store: Store, ref: str) -> str:
    row = await store.get_tenant(ref) or await store.find_tenant(ref)
    if row is None:
        raise OrchError("NOT_FOUND", f"no tenant {ref!r}", param="tenant")
    return row.id


async def _run(ns: argparse.Namespace) -> str:
    if ns.end and ns.start >= ns.end:
        raise OrchError("INVALID_ARGUMENT", "the period is empty: --from must be before --to",
                        param="from")
    store = await Store.open(_url(ns))
    try:
        if ns.verb == "export":
            tenant = await _tenant_id(store, ns.tenant) if ns.tenant else ""
            found = await usage.export(store, tenant, ns.start, ns.end)
            return found.render(ns.format)
        rows = await usage.earnings(store, ns.start, ns.end)
        return render_earnings(rows, ns.format, ns.price_per_1k_tokens, ns.price_per_gib_hour)
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    """`argv` after the noun: ["export", "--tenant", ...] or ["earnings", ...]."""
    ns = _parser().parse_args(argv)
    try:
        text = asyncio.run(_run(ns))
    except StoreError as exc:
        print(f"llama-orch usage: cannot use the state store: {exc}", file=sys.stderr)
        return 1
    if ns.output:
        Path(ns.output).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
