"""Every python example in sdk/python/README.md runs, as it is, against a live stack:
each block in its own interpreter, with only the SDK's source on its path and the
stack's address in LLAMA_ORCH_ADDRESS (as a reader's shell would have it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
BLOCKS = re.findall(r"^```python\n(.*?)^```", (SDK / "README.md").read_text(),
                    re.DOTALL | re.MULTILINE)


def test_the_readme_has_examples_for_each_face():
    text = "\n".join(BLOCKS)
    for call in ("chat.completions.create", "completions.create", "models.list", "jobs.submit",
                 "jobs.stream", "from_seq", "jobs.generate", "detach=True", "idempotency_key",
                 "facts.watch", "AsyncLlamaOrch", "admin.", "NotFoundError"):
        assert call in text, call


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_a_readme_example_runs(stack, code):
    env = {**os.environ, "LLAMA_ORCH_ADDRESS": stack.orchestrator,
           "PYTHONPATH": str(SDK / "src")}
    env.pop("LLAMA_ORCH_API_KEY", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=SDK, check=False,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip(), "an example should show what it does"
