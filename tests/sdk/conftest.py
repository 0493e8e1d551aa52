"""The SDK's tests. The SDK is its own distribution (sdk/python); these tests import it
from its source tree, and most of them talk to a live stack: a real orchestrator and
pool manager (no gateway: the SDK speaks gRPC) serving the embedded tiny model on the hf
engine (CPU), one stack per test module."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

SDK_SRC = Path(__file__).resolve().parents[2] / "sdk" / "python" / "src"
if str(SDK_SRC) not in sys.path:
    sys.path.insert(0, str(SDK_SRC))

from tests.stack import Stack, start_daemon, wait_serving  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from llama_orch_sdk import LlamaOrch
    s = Stack(tmp_path_factory.mktemp("sdk"))
    s.write_config()
    procs = [start_daemon(s.root, f"{module}.log", module, "--config", str(s.config_path))
             for module in ("orchestrator", "pool_manager")]
    try:
        wait_serving(s.orchestrator)
        # Jobs would wait for the pool anyway; admin calls would not.
        with LlamaOrch(s.orchestrator) as client, \
                client.facts.watch(kinds=["pool.joined"], timeout=60) as joined:
            next(joined)
        yield s
    finally:
        # The pool manager first: an orchestrator with a pool still linked takes ~8 s more.
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def client(stack):
    from llama_orch_sdk import LlamaOrch
    with LlamaOrch(stack.orchestrator) as c:
        yield c


@pytest.fixture
def settled(client):
    """settled(job_id) -> the job's record once it is done (or after 60 s, as it is)."""
    def wait(job_id: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            job = client.jobs.get(job_id)
            if job.done or time.monotonic() > deadline:
                return job
            time.sleep(0.1)
    return wait
