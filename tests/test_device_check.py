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
    out = run("--device", "cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["gpu_worker"]["ready_ms"] > 0
    for s in result["seeds"]:
        assert s["gpu_repeat_identical"] and s["gpu_equals_cpu"]  # both on the CPU here
        assert s["gpu_proof"]["token_hash"] == s["cpu_proof"]["token_hash"]
    sys.path.insert(0, str(ROOT / "tools"))
    import device_check
    page = device_check.render(result)
    assert "| seed |" in page and f"| {result['seeds'][0]['seed']} | True | True |" in page


def test_a_self_test_is_never_recorded():
    out = run("--device", "cpu", "--write")
    assert out.returncode == 2 and "self-test" in out.stderr
