"""`llama-orch fetch REF`: put a model into the pool's cache, as the pool manager would.

    llama-orch fetch hf:owner/name[@rev][::file=path] [--config FILE] [--cache-dir DIR]
                     [--budget-bytes N]

On success stdout has two lines: the local folder, then the ref pinned to its commit.
A progress bar goes to stderr when it is a terminal. On failure stderr's last line is
`fetch: CODE: message` and the exit status is 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from common import config
from common.errors import ConfigError, OrchError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llama-orch fetch")
    parser.add_argument("ref", help="hf:owner/name[@rev][::file=path] or file:/abs/path")
    parser.add_argument("--config", help="TOML config (pool.cache_dir, pool.cache_budget_bytes)")
    parser.add_argument("--cache-dir", help="cache folder (default: the pool's)")
    parser.add_argument("--budget-bytes", type=int, help="0 = no budget (default: the pool's)")
    ns = parser.parse_args(argv)
    try:
        model = _fetch(ns)
    except OrchError as err:
        print(f"fetch: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(model.path)
    print(model.pinned_ref)
    return 0


def _fetch(ns: argparse.Namespace):
    from tqdm import tqdm

    from pool_manager.cache import ModelCache  # imports huggingface_hub: only when fetching

    cfg = config.load(ns.config)
    root = Path(ns.cache_dir).expanduser() if ns.cache_dir else config.pool_cache_dir(cfg)
    budget = cfg.pool.cache_budget_bytes if ns.budget_bytes is None else ns.budget_bytes
    if budget < 0:
        raise ConfigError("--budget-bytes must not be negative", param="budget_bytes")
    with tqdm(total=0, unit="B", unit_scale=True, file=sys.stderr, disable=None,
              desc=ns.ref) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return asyncio.run(ModelCache(root, budget).ensure(ns.ref, progress))
