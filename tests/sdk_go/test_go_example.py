"""The Go SDK: gen/go is fresh, the SDK builds offline, and its example streams a real
completion from a live stack (orchestrator + pool manager + tiny model on CPU) while
following the job's facts.

Needs Debian's Go toolchain (tools/install_go.sh). Without it these tests skip, unless
LLAMA_ORCH_REQUIRE_GO=1 (CI), where a missing toolchain is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2
from tests.stack import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("LLAMA_ORCH_REQUIRE_GO") == "1"
SUMMARY = re.compile(r"^finish_reason=(\S+) prompt_tokens=(\d+) completion_tokens=(\d+) "
                     r"total_tokens=(\d+) job=(\S+)$")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (run tools/install_go.sh)"
    if REQUIRE:
        pytest.fail(why + " and LLAMA_ORCH_REQUIRE_GO=1")
    pytest.skip(why)


def test_gen_go_is_fresh():
    need("protoc", "protoc-gen-go", "protoc-gen-go-grpc")
    out = subprocess.run(["tools/gen_go.sh", "--check"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sdk_unit_tests_pass():
    """go vet, then the SDK's own tests against an in-process fake ClientService."""
    need("go")
    for args in (["--vet"], ["--test", "-count=1"]):
        out = subprocess.run(["sdk/go/build.sh", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    need("go")
    binary = tmp_path_factory.mktemp("go") / "stream"
    out = subprocess.run(["sdk/go/build.sh", str(binary)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return binary


def run_example(binary: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)


def test_unreachable_orchestrator_is_one_line_unavailable(example):
    out = run_example(example, "-addr", f"127.0.0.1:{free_port()}", "-timeout", "20s", timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: UNAVAILABLE"), out.stderr


@pytest.fixture(scope="module")
def stack(example, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("go-stack")).start()
    yield s
    s.stop()


def get_job(stack, job_id: str) -> common_pb2.Job:
    with grpc.insecure_channel(stack.orchestrator) as ch:
        return client_pb2_grpc.ClientServiceStub(ch).GetJob(
            client_pb2.GetJobRequest(job_id=job_id), timeout=10).job


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["prompt", "chat"])
def test_example_streams_text_and_the_jobs_facts(example, stack, mode):
    args = ["-addr", stack.orchestrator, "-prompt", "tell me a story about a fox",
            "-max-tokens", "24", "-seed", "7"]
    if mode == "chat":
        args.append("-chat")
    out = run_example(example, *args)
    assert out.returncode == 0, out.stdout + out.stderr

    *text_lines, summary = out.stdout.rstrip("\n").split("\n")
    m = SUMMARY.match(summary)
    assert m, out.stdout
    finish, prompt_tokens, completion_tokens, total_tokens, job_id = m.groups()
    text = "\n".join(text_lines)
    assert text.strip(), out.stdout
    assert finish in ("stop", "length")
    assert int(prompt_tokens) > 0 and 0 < int(completion_tokens) <= 24
    assert int(total_tokens) == int(prompt_tokens) + int(completion_tokens)

    facts = re.findall(r"^fact id=(\d+) kind=(\S+) code=(\S+)$", out.stderr, re.M)
    kinds = [k for _, k, _ in facts]
    assert {"JOB_ADMITTED", "JOB_DISPATCHED", "JOB_STARTED"} <= set(kinds), out.stderr
    assert kinds[-1] == "JOB_FINISHED" and kinds.count("JOB_FINISHED") == 1, out.stderr
    ids = [int(i) for i, _, _ in facts]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ("JOB_FINISHED", "job.finished") in {(k, c) for _, k, c in facts}

    # What the Go client saw is what the orchestrator recorded.
    job = get_job(stack, job_id)
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED
    assert job.finish_reason == finish
    assert job.usage.completion_tokens == int(completion_tokens)


@pytest.mark.e2e
def test_unknown_model_exits_non_zero_with_one_line(example, stack):
    out = run_example(example, "-addr", stack.orchestrator, "-model", "no-such-model", timeout=60)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0
    assert len(lines) == 1 and "MODEL_NOT_FOUND" in lines[0], out.stderr
    assert out.stdout == ""
