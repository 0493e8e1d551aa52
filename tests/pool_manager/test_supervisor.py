"""The supervisor spawns real worker processes and reports how they ended."""

import asyncio
import os
import signal
import sys

import pytest

from llama_orch.v1 import pool_link_pb2
from orchestrator.catalog import TINY_PATH
from pool_manager.supervisor import MAX_LINE_BYTES, LineSplitter, Supervisor


async def _run(cmd: pool_link_pb2.StartWorkerCommand, kill: bool = False) -> pool_link_pb2.WorkerExited:
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    sup = Supervisor("127.0.0.1:1", lambda r: done.set_result(r))
    wp = await sup.spawn(cmd, set())
    if kill:
        await asyncio.sleep(0.5)
        wp.proc.send_signal(signal.SIGKILL)
    report = await asyncio.wait_for(done, 120)
    assert cmd.worker_id not in sup.workers
    return report


async def test_a_worker_that_exits_at_once_is_reported_with_code_and_stderr():
    report = await _run(pool_link_pb2.StartWorkerCommand(
        worker_id="w-bad", model_ref="hf:not/supported", engine="hf", device_ids=["cpu"]))
    assert report.HasField("exit_code") and report.exit_code != 0 and not report.HasField("signal")
    assert "INVALID_MODEL_REF" in report.stderr_tail
    assert not report.expected


async def test_a_killed_worker_is_reported_with_its_signal():
    # Loading the real tiny model takes seconds, so the kill lands while it loads.
    report = await _run(pool_link_pb2.StartWorkerCommand(
        worker_id="w-kill", model_ref=f"file:{TINY_PATH}", engine="hf", device_ids=["cpu"]), kill=True)
    assert (report.signal, report.signal_name) == (9, "SIGKILL")
    assert not report.HasField("exit_code")


# ---- stand-in workers: `python -c SCRIPT` spawned as the supervisor spawns a worker ----

def stand_in(monkeypatch, script: str) -> None:
    real = asyncio.create_subprocess_exec

    async def exec_(program, *args, **kw):  # keeps the supervisor's pipes and session
        return await real(sys.executable, "-c", script, **kw)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", exec_)


async def _spawn_stand_in(monkeypatch, script: str):
    stand_in(monkeypatch, script)
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    sup = Supervisor("127.0.0.1:1", lambda r: done.set_result(r), grace_s=2.0)
    wp = await sup.spawn(pool_link_pb2.StartWorkerCommand(
        worker_id="w1", model_ref="file:/m", engine="hf", device_ids=["cpu"]), set())
    return sup, wp, done


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # an orphaned zombie waits for init, but holds nothing


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def test_a_worker_that_writes_a_huge_stderr_line_is_read_to_the_end_and_reported(monkeypatch):
    # A traceback whose repr holds a long prompt: 100 KB on one line, then more output
    # the worker blocks on unless the pipe keeps being read.
    script = ("import sys; sys.stderr.write('x' * 100_000 + '\\n');"
              "[sys.stderr.write('y' * 1000 + '\\n') for _ in range(200)];"
              "sys.stderr.write('last words'); sys.exit(3)")
    sup, wp, done = await _spawn_stand_in(monkeypatch, script)
    report = await asyncio.wait_for(done, 10)
    assert report.exit_code == 3 and "w1" not in sup.workers
    assert report.stderr_tail.endswith("last words")
    assert all(len(line) <= MAX_LINE_BYTES + len(LineSplitter.CUT_MARK) for line in wp.stderr_tail)


async def test_a_worker_ended_by_a_real_time_signal_is_reported(monkeypatch):
    sup, wp, done = await _spawn_stand_in(
        monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGRTMIN + 2)")
    report = await asyncio.wait_for(done, 10)
    assert (report.signal, report.signal_name) == (signal.SIGRTMIN + 2, "SIGRTMIN+2")
    assert "w1" not in sup.workers


async def test_an_exit_is_reported_while_a_child_holds_stderr_and_the_child_goes_with_it(
        monkeypatch, tmp_path):
    # e.g. a tensor-parallel rank the worker started, which inherited its stderr
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, sys; p = subprocess.Popen(['sleep', '30']);"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); sys.exit(1)")
    sup, wp, done = await _spawn_stand_in(monkeypatch, script)
    try:
        report = await asyncio.wait_for(done, 5)
        assert report.exit_code == 1
        child = int(pid_file.read_text())
        await asyncio.sleep(0.2)
        assert not alive(child)
    finally:
        if pid_file.exists():
            kill_quietly(int(pid_file.read_text()))


async def test_a_stop_reaches_the_processes_the_worker_started(monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '30'], "
              f"stderr=subprocess.DEVNULL); open({str(pid_file)!r}, 'w').write(str(p.pid));"
              f"time.sleep(30)")
    sup, wp, done = await _spawn_stand_in(monkeypatch, script)
    try:
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.05)
        child = int(pid_file.read_text())
        assert await sup.stop("w1")
        report = await asyncio.wait_for(done, 5)
        assert report.expected and report.signal_name == "SIGTERM"
        await asyncio.sleep(0.2)
        assert not alive(child)
    finally:
        kill_quietly(wp.proc.pid)
        if pid_file.exists():
            kill_quietly(int(pid_file.read_text()))


@pytest.mark.parametrize("chunks, lines", [
    ([b"a\nb\n"], [b"a", b"b"]),
    ([b"ab", b"c\nd"], [b"abc", b"d"]),
    ([b"x" * 10 + b"\nok\n"], [b"xxxx" + LineSplitter.CUT_MARK, b"ok"]),
    ([b"xx", b"xx", b"xx\n", b"ok\n"], [b"xxxx" + LineSplitter.CUT_MARK, b"ok"]),
    ([b"xxxx\n"], [b"xxxx"]),
], ids=["whole", "split-across-chunks", "cut", "cut-across-chunks", "exactly-the-limit"])
def test_stderr_is_split_into_lines_and_long_ones_are_cut(chunks, lines):
    splitter = LineSplitter(4)
    out = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.close()
    assert out == lines
