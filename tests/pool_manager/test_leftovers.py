"""The worker ledger stops real leftover processes, and never touches a process not ours.

The test process is the parent of these "workers", so it reaps them (Popen.wait) after
each sweep; until then a stopped one is a zombie, which the sweep must count as gone.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pool_manager.leftovers import Identity, Ledger, Leftover, default_path, identity

# Long enough never to expire on a slow machine when SIGTERM works; costs nothing then.
GRACE_S = 10.0
SHORT_GRACE_S = 0.5

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(worker_id: str = "w-x", code: str = SLEEPER) -> subprocess.Popen:
        # Trailing argv after `-c code` stays in /proc/<pid>/cmdline, as a worker's does.
        proc = subprocess.Popen([sys.executable, "-c", code, "--worker-id", worker_id],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "ready\n"  # signal handlers are in place
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def path(tmp_path):
    return default_path(tmp_path, "p1")


def _wait_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + 30  # a guard against hanging, not an assertion on time
    while _state(pid) != state:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {state}"
        time.sleep(0.01)


def _state(pid: int) -> str:
    return _stat(pid).rpartition(")")[2].split()[0]


def _stat(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read()


def _rewrite_entry(path, worker_id: str, **changes) -> None:
    data = json.loads(path.read_text())
    data["workers"][worker_id].update(changes)
    path.write_text(json.dumps(data))


async def test_a_live_leftover_is_terminated_logged_and_forgotten(spawn, path, capsys):
    proc = spawn("w-x")
    Ledger(path).record("w-x", proc.pid)

    assert await Ledger(path).sweep(GRACE_S) == [Leftover("w-x", proc.pid, "terminated")]
    assert proc.wait(10) == -signal.SIGTERM
    assert Ledger(path).entries() == {}
    line = next(json.loads(x) for x in capsys.readouterr().err.splitlines()
                if "worker.leftover_stopped" in x)
    assert (line["worker_id"], line["pid"], line["how"]) == ("w-x", proc.pid, "terminated")


async def test_a_stopped_leftover_is_continued_so_sigterm_lands(spawn, path):
    proc = spawn("w-x")
    os.kill(proc.pid, signal.SIGSTOP)
    _wait_state(proc.pid, "T")
    ledger = Ledger(path)
    ledger.record("w-x", proc.pid)

    # Without SIGCONT the SIGTERM would stay pending and only SIGKILL would stop it.
    assert await ledger.sweep(GRACE_S) == [Leftover("w-x", proc.pid, "terminated")]
    assert proc.wait(10) == -signal.SIGTERM


async def test_a_leftover_that_ignores_sigterm_is_killed_after_the_grace(spawn, path):
    proc = spawn("w-x", IGNORES_TERM)
    ledger = Ledger(path)
    ledger.record("w-x", proc.pid)

    assert await ledger.sweep(SHORT_GRACE_S) == [Leftover("w-x", proc.pid, "killed")]
    assert proc.wait(10) == -signal.SIGKILL


@pytest.mark.parametrize(("changes", "how"), [
    ({"start_ticks_delta": 1}, "not ours"),
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, "gone"),
    ({"key": "w-other"}, "not ours"),
], ids=["pid-reused-by-another-process", "recorded-in-an-earlier-boot",
        "cmdline-runs-another-worker"])
async def test_a_process_whose_identity_differs_is_left_alone(spawn, path, changes, how):
    proc = spawn("w-x")
    wid = changes.get("key", "w-x")
    Ledger(path).record(wid, proc.pid)
    if "start_ticks_delta" in changes:
        _rewrite_entry(path, wid, start_ticks=identity(proc.pid).start_ticks + 1)
    if "boot_id" in changes:
        _rewrite_entry(path, wid, boot_id=changes["boot_id"])

    assert await Ledger(path).sweep(SHORT_GRACE_S) == [Leftover(wid, proc.pid, how)]
    assert proc.poll() is None and _state(proc.pid) != "Z"
    assert Ledger(path).entries() == {}


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
async def test_a_leftover_that_already_exited_is_gone(spawn, path, reaped):
    proc = spawn("w-x")
    ledger = Ledger(path)
    ledger.record("w-x", proc.pid)
    proc.kill()
    if reaped:
        proc.wait()
    else:
        _wait_state(proc.pid, "Z")

    assert await ledger.sweep(SHORT_GRACE_S) == [Leftover("w-x", proc.pid, "gone")]
    assert ledger.entries() == {}


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b'{"workers": ["w-x"]}',
    b'{"version": 1}',
    b'{"workers": {"w-x": {"pid": -1, "boot_id": "b", "start_ticks": 1}}}',
    b'{"workers": {"w-x": {"pid": "123", "boot_id": "b", "start_ticks": 1}}}',
], ids=["truncated", "binary", "workers-not-object", "no-workers", "pid-minus-one",
        "pid-not-int"])
async def test_a_corrupt_ledger_is_reported_and_replaced(path, capsys, content):
    path.parent.mkdir(parents=True)
    path.write_bytes(content)

    ledger = Ledger(path)
    assert ledger.problem
    assert "pool.ledger_corrupt" in capsys.readouterr().err
    assert await ledger.sweep(SHORT_GRACE_S) == []
    again = Ledger(path)
    assert (again.problem, again.entries()) == ("", {})


async def test_a_ledger_that_cannot_be_read_or_written_never_raises(tmp_path, capsys):
    path = tmp_path / "workers.json"
    path.mkdir()  # a directory where the file should be

    ledger = Ledger(path)
    assert ledger.problem
    ledger.record("w-x", os.getpid())
    ledger.forget("w-x")
    assert await ledger.sweep(SHORT_GRACE_S) == []
    assert "pool.ledger_write_failed" in capsys.readouterr().err


def test_the_ledger_survives_a_restart(spawn, path):
    a, b = spawn("w-a"), spawn("w-b")
    ledger = Ledger(path)
    assert ledger.record("w-a", a.pid) and ledger.record("w-b", b.pid)
    ledger.forget("w-a")
    ledger.forget("w-never-recorded")  # idempotent

    restarted = Ledger(path)
    assert restarted.problem == ""
    assert restarted.entries() == {"w-b": (b.pid, identity(b.pid))}


async def test_a_comm_with_spaces_and_parens_does_not_confuse_the_identity(spawn, path):
    # Only a process itself may rename itself; the name shifts naively split fields.
    proc = spawn("w-x", "open('/proc/self/comm', 'w').write('a) (b c) d'); " + SLEEPER)
    assert _stat(proc.pid).startswith(f"{proc.pid} (a) (b c) d) ")
    ident = identity(proc.pid)
    assert isinstance(ident, Identity) and ident.start_ticks > 0 and ident.boot_id
    ledger = Ledger(path)
    ledger.record("w-x", proc.pid)

    assert await ledger.sweep(GRACE_S) == [Leftover("w-x", proc.pid, "terminated")]
    assert proc.wait(10) == -signal.SIGTERM


def test_recording_a_process_already_gone_records_nothing(spawn, path):
    proc = spawn("w-x")
    proc.kill()
    proc.wait()
    ledger = Ledger(path)
    assert not ledger.record("w-x", proc.pid)
    assert Ledger(path).entries() == {}
