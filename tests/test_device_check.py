"""tools/device_check.py: refuses without a GPU, self-tests its steps on the CPU, renders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "device_check.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: the check would run for real")
def test_without_a_gpu_it_says_why_and_records_nothing():
    before = (ROOT / "docs" / "DEVICE_CHECK.md").read_text() if (ROOT / "docs" / "DEVICE_CHECK.md").exists() else None
    out = run("--write")
    assert out.returncode == 2 and "no GPU to check" in out.stderr
    after = (ROOT / "docs" / "DEVICE_CHECK.md").read_text() if (ROOT / "docs" / "DEVICE_CHECK.md").exists() else None
    assert after == before


def test_the_cpu_self_test_runs_every_step_and_renders():
    # One request per client keeps step 5 (the gateway benchmark) to seconds.
    out = run("--device", "cpu", "--gateway-bench", "--gateway-bench-requests", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # the benchmark's own progress lines went to stderr
    bench = result["gateway_overhead"]
    assert bench["cpus"] >= 1 and list(bench["by_concurrency"]) == ["1", "16", "64"]
    assert [x["requests"] for x in bench["by_concurrency"].values()] == [1, 16, 64]
    assert all(x["req_per_s"] > 0 for x in bench["by_concurrency"].values())
    assert result["gpu_worker"]["ready_ms"] > 0
    for s in result["seeds"]:
        assert s["gpu_repeat_identical"] and s["gpu_equals_cpu"]  # both on the CPU here
        assert s["gpu_proof"]["token_hash"] == s["cpu_proof"]["token_hash"]
    sys.path.insert(0, str(ROOT / "tools"))
    import device_check
    page = device_check.render(result)
    assert "| seed |" in page and f"| {result['seeds'][0]['seed']} | True | True |" in page
    x = bench["by_concurrency"]["16"]
    assert f"| 16 | 16 | {x['added_ttft_p50']} | {x['added_ttft_p99']} |" in page
    assert f"| {x['bare_chain_added_ttft_p50']} / {x['bare_chain_added_ttft_p99']} |" in page


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_a_bad_request_count_for_the_gateway_bench_is_refused_before_anything_runs(bad):
    out = run("--device", "cpu", "--gateway-bench", "--gateway-bench-requests", bad)
    assert out.returncode == 2 and "--gateway-bench-requests" in out.stderr
    assert out.stdout == ""


def test_a_self_test_is_never_recorded():
    out = run("--device", "cpu", "--write")
    assert out.returncode == 2 and "self-test" in out.stderr
