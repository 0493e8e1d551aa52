"""Worker processes a previous pool manager left behind: a ledger of them, and the sweep.

Workers stop on their own when re-parented, but a stopped (SIGSTOP) or wedged one does
not, and keeps its GPU memory. So the pool manager records every worker it starts in a
small JSON ledger (`Ledger.record` on spawn, `Ledger.forget` on exit), and a restarted
pool manager calls `Ledger.sweep` before it registers with the orchestrator.

Contract:
- The ledger file is rewritten atomically (temp file, fsync, `os.replace`) on every
  change, so a crash leaves either the old or the new ledger, never half of one.
- Each entry holds the pid *and* the process's identity: boot id and start time (clock
  ticks since boot, field 22 of /proc/<pid>/stat). A pid is signalled only when it is
  alive, both match, and its cmdline holds `--worker-id <id>`; anything else is dropped
  untouched, so a reused pid is never mistaken for our worker.
- Signals go through a pidfd opened *before* the identity check: once the check passes,
  the pidfd is known to be our worker (a process started after the pidfd was opened
  cannot have the recorded start time), so no pid reuse can slip in between.
- Leftovers are not our children, so the sweep cannot waitpid them; it polls /proc, and
  a zombie counts as gone.
- A corrupt or unreadable ledger is logged (`pool.ledger_corrupt`), kept in `problem`,
  and replaced; it never raises. Failing to write the ledger is logged, never raised:
  the ledger is a safety net and must not be why a worker fails to start.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from common import log

How = Literal["terminated", "killed", "survived", "gone", "not ours"]

_POLL_S = 0.05
# After SIGKILL a process normally vanishes at once; one in uninterruptible sleep (D)
# may not. We wait this long before reporting it as "survived".
_KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Identity:
    """What makes a pid *this* process: the boot it ran in and its start time."""

    boot_id: str
    start_ticks: int


@dataclass(frozen=True)
class Leftover:
    """One ledger entry the sweep dealt with.

    how: "terminated" (stopped by SIGTERM within the grace), "killed" (needed SIGKILL),
    "survived" (still there after SIGKILL: uninterruptible sleep), "gone" (already
    exited, or recorded in an earlier boot), "not ours" (the pid now belongs to another
    process, which was left alone).
    """

    worker_id: str
    pid: int
    how: How


def default_path(data_dir: Path, pool_id: str) -> Path:
    return Path(data_dir) / f"pool-{pool_id}" / "workers.json"


class Ledger:
    """The workers this pool manager started, kept on disk at `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # Why the file on disk could not be used ("" when it could); the file is
        # replaced by the next write.
        self.problem = ""
        self._entries: dict[str, dict] = self._load()

    def entries(self) -> dict[str, tuple[int, Identity]]:
        return {wid: (e["pid"], Identity(e["boot_id"], e["start_ticks"]))
                for wid, e in self._entries.items()}

    def record(self, worker_id: str, pid: int) -> bool:
        """Remember a worker just started. False (nothing recorded) if it is already gone."""
        ident = identity(pid)
        if ident is None:
            return False
        self._entries[worker_id] = {"pid": pid, **asdict(ident)}
        self._save()
        return True

    def forget(self, worker_id: str) -> None:
        """Drop a worker that exited. Idempotent: forgetting an unknown id is a no-op."""
        if self._entries.pop(worker_id, None) is not None:
            self._save()

    async def sweep(self, grace_s: float = 5.0) -> list[Leftover]:
        """Stop every recorded worker that is still running, then clear those entries.

        Each one gets SIGTERM (and SIGCONT, so a stopped one can act on it), then
        SIGKILL if still there after `grace_s`. Entries are handled concurrently, so a
        sweep takes about `grace_s` at most however many there are (plus up to 5 s
        for one that outlives SIGKILL). Entries recorded while it runs are kept.
        """
        swept = dict(self._entries)
        results = await asyncio.gather(*(
            _stop(wid, e["pid"], Identity(e["boot_id"], e["start_ticks"]), grace_s)
            for wid, e in swept.items()))
        for left in results:
            if self._entries.get(left.worker_id) == swept[left.worker_id]:
                del self._entries[left.worker_id]
        self._save()  # also replaces a corrupt file
        return list(results)

    def _load(self) -> dict[str, dict]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            return self._corrupt(f"unreadable: {err}")
        try:
            workers = json.loads(raw)["workers"]
            if not isinstance(workers, dict):
                raise TypeError("'workers' is not an object")
            for wid, e in workers.items():
                # pid > 1 matters: a signal to pid 0 or -1 reaches a whole group or
                # every process we may signal.
                if not (isinstance(e.get("pid"), int) and e["pid"] > 1
                        and isinstance(e.get("start_ticks"), int)
                        and isinstance(e.get("boot_id"), str)):
                    raise ValueError(f"bad entry for {wid!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            return self._corrupt(f"malformed: {err!r}")
        return {wid: {k: e[k] for k in ("pid", "boot_id", "start_ticks")}
                for wid, e in workers.items()}

    def _corrupt(self, problem: str) -> dict[str, dict]:
        self.problem = problem
        log.emit("pool_manager", "pool.ledger_corrupt",
                 "worker ledger unusable; leftover workers from before cannot be found",
                 level="warning", path=str(self.path), problem=problem)
        return {}

    def _save(self) -> None:
        data = json.dumps({"version": 1, "workers": self._entries}, indent=1, sort_keys=True)
        tmp = ""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".workers-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = ""
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
            self.problem = ""
        except OSError as err:
            log.emit("pool_manager", "pool.ledger_write_failed", str(err), level="warning",
                     path=str(self.path))
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; None if the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    # Field 2 is "(comm)", and comm may hold spaces and ')' itself: split after the last.
    return raw[raw.rfind(")") + 1:].split()


def identity(pid: int) -> Identity | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return Identity(boot_id(), int(fields[19]))  # field 22 is the 20th after comm


def _running(pid: int, ident: Identity) -> bool:
    fields = _stat_fields(pid)
    return (fields is not None and len(fields) >= 20 and fields[0] not in ("Z", "X")
            and int(fields[19]) == ident.start_ticks)


def _runs_worker(pid: int, worker_id: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    pairs = itertools.pairwise(argv)
    return any(a == "--worker-id" and b == worker_id for a, b in pairs) \
        or f"--worker-id={worker_id}" in argv


async def _stop(worker_id: str, pid: int, ident: Identity, grace_s: float) -> Leftover:
    if ident.boot_id != boot_id():
        return Leftover(worker_id, pid, "gone")  # recorded in an earlier boot
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return Leftover(worker_id, pid, "gone")
    except (OSError, AttributeError):
        pidfd = None  # kernel < 5.3: plain kill(2), with its small pid-reuse window
    try:
        if not _running(pid, ident):
            how: How = "gone" if identity(pid) in (None, ident) else "not ours"
            return Leftover(worker_id, pid, how)
        if not _runs_worker(pid, worker_id):
            return Leftover(worker_id, pid, "not ours")
        _signal(pid, pidfd, signal.SIGTERM)
        _signal(pid, pidfd, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        how = "terminated"
        if not await _wait_gone(pid, ident, grace_s):
            _signal(pid, pidfd, signal.SIGKILL)
            how = "killed" if await _wait_gone(pid, ident, _KILL_WAIT_S) else "survived"
    finally:
        if pidfd is not None:
            os.close(pidfd)
    log.emit("pool_manager", "worker.leftover_stopped",
             f"stopped {worker_id} left by a previous pool manager",
             level="error" if how == "survived" else "info", worker_id=worker_id, pid=pid, how=how)
    return Leftover(worker_id, pid, how)


def _signal(pid: int, pidfd: int | None, sig: signal.Signals) -> None:
    try:
        if pidfd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass  # exited meanwhile


async def _wait_gone(pid: int, ident: Identity, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _running(pid, ident):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True
