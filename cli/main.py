"""`llama-orch` command line: one entry point for every daemon and for home mode.

    llama-orch up [--config FILE]            home mode: orchestrator + pool manager + gateway
    llama-orch orchestrator [--config FILE]  the orchestrator alone
    llama-orch pool-manager [--config FILE]  a pool manager alone
    llama-orch gateway [--listen ... --orchestrator ...]
    llama-orch worker ...                    a worker (normally spawned by a pool manager)
    llama-orch events [--orchestrator ADDR]  follow the fact stream as JSON lines
    llama-orch fetch REF [--cache-dir DIR]   download a model into the pool's cache
    llama-orch ca init|issue|revoke|join-token|enroll-provider|provider-keygen
                                             the orchestrator's PKI (docs/SECURITY.md)
    llama-orch tenants create|list ...       tenants, straight in the store (cli/keys.py)
    llama-orch keys create|list|revoke ...   API keys, likewise: bootstraps the first admin key
    llama-orch usage export|earnings ...     billing exports and provider earnings (cli/usage.py)
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # see cli/__main__.py

from common.errors import OrchError  # noqa: E402

USAGE = __doc__.split("\n", 2)[2]


def _events(argv: list[str]) -> int:
    import argparse
    import asyncio
    import json

    from google.protobuf import json_format

    from common import grpc_server
    from llama_orch.v1 import client_pb2, client_pb2_grpc

    parser = argparse.ArgumentParser(prog="llama-orch events")
    parser.add_argument("--orchestrator", default="127.0.0.1:9100")
    ns = parser.parse_args(argv)

    async def follow() -> None:
        async with grpc_server.channel(ns.orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)
            async for resp in stub.WatchFacts(client_pb2.WatchFactsRequest()):
                print(json.dumps(json_format.MessageToDict(resp.fact)), flush=True)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        print(f"llama-orch events: {OrchError.from_rpc_error(exc).message if hasattr(exc, 'code') else exc}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "up":
            import argparse

            from cli import up
            parser = argparse.ArgumentParser(prog="llama-orch up")
            parser.add_argument("--config", help="TOML config file")
            return up.run(parser.parse_args(rest).config)
        if cmd == "orchestrator":
            from orchestrator.main import main as run
        elif cmd == "pool-manager":
            from pool_manager.main import main as run
        elif cmd == "gateway":
            from gateway.main import main as run
        elif cmd == "worker":
            from worker.main import main as run
        elif cmd == "events":
            return _events(rest)
        elif cmd == "fetch":
            from cli.fetch import main as run
        elif cmd == "ca":
            from cli.ca import main as run
        elif cmd in ("keys", "tenants"):
            from cli.keys import main as keys_main
            return keys_main(args)
        elif cmd == "usage":
            from cli.usage import main as run
        elif cmd == "version":
            from importlib.metadata import version
            print(version("llama-orch"))
            return 0
        else:
            print(f"llama-orch: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
            return 2
        return run(rest) or 0
    except OrchError as err:
        print(f"llama-orch: {err.code}: {err.message}", file=sys.stderr)
        return 2
