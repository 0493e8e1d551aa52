"""The SDK installs on its own: `pip install ./sdk/python` into a fresh virtual
environment brings grpcio and protobuf and nothing of the llama-orch project, and the
installed package imports and works there. Needs the package index (grpcio, protobuf)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"

CHECK = textwrap.dedent("""
    import importlib.metadata, importlib.util, sys
    import llama_orch_sdk
    from llama_orch_sdk import LlamaOrch, UnavailableError

    assert "site-packages" in llama_orch_sdk.__file__, llama_orch_sdk.__file__
    for project_module in ("llama_orch", "common", "orchestrator", "gateway", "grpc_status"):
        assert importlib.util.find_spec(project_module) is None, project_module
    requires = sorted(r.split(">")[0].split("<")[0] for r in
                      importlib.metadata.requires("llama-orch-sdk"))
    assert requires == ["grpcio", "protobuf"], requires
    with LlamaOrch("127.0.0.1:1", timeout=5) as client:
        try:
            client.models.list()
        except UnavailableError as err:
            print("ok", err.code)
""")


def test_the_sdk_installs_and_runs_alone(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in sdk/python.
    source = tmp_path / "sdk"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", str(source)],
                             check=False, capture_output=True, text=True, timeout=480)
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, check=False,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok UNAVAILABLE"
