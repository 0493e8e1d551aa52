"""`llama-orch keys` and `llama-orch tenants`: API keys and tenants, straight in the store.

    llama-orch tenants create NAME              prints the new tenant's id
    llama-orch tenants list
    llama-orch keys create --tenant T --scope client|admin [--name N]
                                                prints the key (shown once, never again)
    llama-orch keys list [--tenant T]           ids, tenants, scopes; never secrets
    llama-orch keys revoke KEY_ID

Every command takes --config FILE (the orchestrator's config: its data_dir or
orchestrator.database say where the store is) or --database URL. These commands open
the store directly rather than calling AdminService, so that an operator can create
the first tenant and admin key before any key exists — the bootstrap:

    llama-orch tenants create ops --config orch.toml
    llama-orch keys create --tenant ops --scope admin --config orch.toml

and from then on use AdminService (CreateTenant, CreateApiKey, ...) with that key.
They are safe while the orchestrator runs (SQLite in WAL mode, or PostgreSQL); a key
revoked here is refused by a running orchestrator within auth.CACHE_TTL_S (30 s),
while one revoked through AdminService is refused at once. --tenant takes a tenant id
or a tenant name.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from common import config as config_mod
from common.errors import OrchError
from orchestrator import auth
from orchestrator.admin_api import new_tenant_id
from orchestrator.store import DuplicateKey, Store, StoreError, url_for_data_dir
from orchestrator.store.store import TenantRow


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="the orchestrator's TOML config (where its store is)")
    common.add_argument("--database", help="store URL (overrides the config)")
    parser = argparse.ArgumentParser(prog="llama-orch", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="noun", required=True)

    tenants = top.add_parser("tenants", help="tenants").add_subparsers(dest="verb", required=True)
    create = tenants.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("name")
    tenants.add_parser("list", parents=[common], help="list tenants")

    keys = top.add_parser("keys", help="API keys").add_subparsers(dest="verb", required=True)
    create = keys.add_parser("create", parents=[common], help="create an API key")
    create.add_argument("--tenant", required=True, help="tenant id or name")
    create.add_argument("--scope", required=True, choices=auth.SCOPES)
    create.add_argument("--name", default="", help="a label for the key")
    listing = keys.add_parser("list", parents=[common], help="list API keys (no secrets)")
    listing.add_argument("--tenant", default="", help="only this tenant's (id or name)")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke an API key")
    revoke.add_argument("key_id")
    return parser


def _url(ns: argparse.Namespace) -> str:
    if ns.database:
        return ns.database
    cfg = config_mod.load(ns.config)
    return cfg.orchestrator.database or url_for_data_dir(cfg.data_dir)


async def _tenant(store: Store, ref: str) -> TenantRow:
    row = await store.get_tenant(ref) or await store.find_tenant(ref)
    if row is None:
        raise OrchError("NOT_FOUND", f"no tenant {ref!r} (create it with "
                        f"`llama-orch tenants create {ref}`)", param="tenant")
    return row


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


async def _run(ns: argparse.Namespace) -> int:
    store = await Store.open(_url(ns))
    try:
        return await _command(store, ns)
    finally:
        await store.close()


async def _command(store: Store, ns: argparse.Namespace) -> int:
    if (ns.noun, ns.verb) == ("tenants", "create"):
        name = ns.name.strip()
        if not name or len(name) > 255 or not name.isprintable():
            raise OrchError("INVALID_ARGUMENT", "a tenant needs a printable name of 1 to 255 "
                            "characters", param="name")
        row = TenantRow(id=new_tenant_id(), name=name, created_at=time.time())
        try:
            await store.create_tenant(row)
        except DuplicateKey:
            raise OrchError("INVALID_ARGUMENT", f"a tenant named {name!r} exists",
                            param="name") from None
        print(row.id)
        print(f"created tenant {name!r}", file=sys.stderr)
    elif (ns.noun, ns.verb) == ("tenants", "list"):
        print(f"{'TENANT':<16} {'CREATED':<19} NAME")
        for t in await store.list_tenants():
            print(f"{t.id:<16} {_when(t.created_at):<19} {t.name}")
    elif (ns.noun, ns.verb) == ("keys", "create"):
        tenant = await _tenant(store, ns.tenant)
        row, secret = auth.new_key(tenant.id, ns.scope, ns.name)
        await store.insert_api_key(row)
        print(secret)
        print(f"created {ns.scope} key {row.id} for tenant {tenant.name!r} ({tenant.id}); "
              "this is the only time it is shown", file=sys.stderr)
    elif (ns.noun, ns.verb) == ("keys", "list"):
        tenant_id = (await _tenant(store, ns.tenant)).id if ns.tenant else ""
        print(f"{'KEY':<16} {'TENANT':<16} {'SCOPE':<6} {'CREATED':<19} {'LAST USED':<19} "
              f"{'REVOKED':<19} NAME")
        for k in await store.list_api_keys(tenant_id):
            print(f"{k.id:<16} {k.tenant_id:<16} {k.scope:<6} {_when(k.created_at):<19} "
                  f"{_when(k.last_used_at):<19} {_when(k.revoked_at):<19} {k.name}")
    elif (ns.noun, ns.verb) == ("keys", "revoke"):
        row = await store.revoke_api_key(ns.key_id)
        if row is None:
            raise OrchError("NOT_FOUND", f"no API key {ns.key_id!r}", param="key_id")
        print(f"revoked key {row.id} (a running orchestrator refuses it within "
              f"{auth.CACHE_TTL_S:.0f} s)", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """`argv` starts with the noun: ["keys", "create", ...] or ["tenants", ...]."""
    ns = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(ns))
    except StoreError as exc:
        print(f"llama-orch {ns.noun}: cannot use the state store: {exc}", file=sys.stderr)
        return 1
