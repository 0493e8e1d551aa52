"""Worker processes: spawn with a device mask, watch, stop (graceful, then forced), reap.

Each worker is a separate OS process (`python -m worker`). A worker watches its parent
and stops when it is re-parented, so no worker outlives its manager. (No preexec_fn
here: running Python between fork and exec in a process with gRPC threads crashes the
child with SIGSEGV/SIGABRT now and then.) On exit the supervisor reports the exit
code or signal and the last lines of stderr.

Each worker leads its own session and process group (start_new_session), so the
processes it starts (a tensor-parallel rank, a compile helper) are signalled with it:
a stop signals the group, and once the worker has exited what is left of its group is
killed, since it may hold the worker's GPU memory. A terminal's Ctrl-C therefore no
longer reaches workers directly; the pool manager stops them on shutdown (stop_all).

A worker's exit is reported as soon as the process has exited, even while one of its
children still holds stderr open; stderr is read in chunks, so a line of any length
is kept (cut to MAX_LINE_BYTES) and never stops the reading.

The one exception, for scale tests only: with `sim_in_process`, a worker whose engine
is `sim` runs as a task in this process (pool_manager.inprocess), from the same command
line. Either way `WorkerProcess.proc` is a `Proc`: the supervisor stops, reaps and
reports both alike.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common import log
from llama_orch.v1 import common_pb2, errors_pb2, pool_link_pb2
from pool_manager.inprocess import InProcessWorker
from pool_manager.leftovers import Ledger

STDERR_TAIL_LINES = 20
MAX_LINE_BYTES = 8192  # a longer stderr line is kept cut to this (workers log short JSON lines)
_READ_BYTES = 65536
# After the worker exited: how long what its pipe still holds is read before giving up
# (a child that left its process group may hold stderr open for good).
STDERR_DRAIN_S = 1.0
# asyncio's wait() returns only once the worker's pipes are closed too; its exit status
# is looked at this often meanwhile, so a child holding stderr does not delay the report.
EXIT_POLL_S = 0.2
IN_PROCESS = "in-process (simulated)"


class Proc(Protocol):
    """What the supervisor uses of a worker: asyncio.subprocess.Process has it, and so
    does pool_manager.inprocess.InProcessWorker (pid = this process's)."""

    pid: int
    returncode: int | None  # negative: ended by that signal
    stderr: asyncio.StreamReader | None  # read() gives b"" once the worker's stderr closed

    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass(eq=False)
class WorkerProcess:
    worker_id: str
    model_ref: str
    engine: str
    device_ids: tuple[str, ...]
    proc: Proc
    started: float = field(default_factory=time.monotonic)
    stderr_tail: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES))
    stopping: bool = False
    ready: bool = False
    reported_error: errors_pb2.ErrorDetail | None = None
    endpoint: str = ""
    # What the worker announced when ready; re-announced when the link re-registers, so
    # a restarted orchestrator adopts running workers instead of starting new ones.
    info: common_pb2.WorkerInfo | None = None
    in_process: bool = False


class Supervisor:
    """Owns this pool's worker processes. `on_exit` receives a WorkerExited report."""

    def __init__(self, callback_address: str, on_exit: Callable[[pool_link_pb2.WorkerExited], None],
                 cpu_threads: int = 1, grace_s: float = 5.0, sim_in_process: bool = False,
                 ledger: Ledger | None = None, worker_tls: list[str] | None = None):
        self.callback_address = callback_address
        # Workers listen where the pool manager does (pool.listen's host): loopback in home
        # mode, the node's address in a lab, so the orchestrator can reach them.
        self.worker_host = callback_address.rpartition(":")[0] or "127.0.0.1"
        # TLS on: the flags that make a worker serve (and call back) with this pool's
        # certificate (worker/main.py --tls-*).
        self.worker_tls = worker_tls or []
        # Worker processes are written down, so a restarted pool manager can stop the
        # ones this one leaves behind if it dies (pool_manager/leftovers.py).
        self.ledger = ledger
        self.on_exit = on_exit
        self.cpu_threads = cpu_threads
        self.grace_s = grace_s
        self.sim_in_process = sim_in_process  # PoolConfig.sim_in_process; never a default
        self.workers: dict[str, WorkerProcess] = {}

    def devices_in_use(self) -> set[str]:
        return {d for w in self.workers.values() for d in w.device_ids}

    async def spawn(self, cmd: pool_link_pb2.StartWorkerCommand, gpu_ids: set[str],
                    model_dir: str = "") -> WorkerProcess:
        args = ["--worker-id", cmd.worker_id,
                "--model-ref", cmd.model_ref, "--engine", cmd.engine or "hf",
                "--devices", ",".join(cmd.device_ids), "--callback", self.callback_address,
                "--listen", f"{self.worker_host}:0", "--threads", str(self.cpu_threads)]
        if model_dir:
            args += ["--model-dir", model_dir]
        args += self.worker_tls
        for key, value in sorted(cmd.engine_options.items()):
            args += ["--option", f"{key}={value}"]
        in_process = self.sim_in_process and cmd.engine == "sim"
        if in_process:
            proc: Proc = InProcessWorker(args)
            log.emit("pool_manager", "worker.spawned", f"{cmd.worker_id} {IN_PROCESS}",
                     worker_id=cmd.worker_id, model_ref=cmd.model_ref, in_process=True)
        else:
            env = dict(os.environ)
            gpus = [d for d in cmd.device_ids if d in gpu_ids]
            # NVML ids are UUIDs, which CUDA_VISIBLE_DEVICES accepts directly.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            env["PYTHONUNBUFFERED"] = "1"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
            if self.ledger is not None:
                self.ledger.record(cmd.worker_id, proc.pid)
        wp = WorkerProcess(cmd.worker_id, cmd.model_ref, cmd.engine, tuple(cmd.device_ids), proc,
                           in_process=in_process)
        self.workers[cmd.worker_id] = wp
        asyncio.create_task(self._watch(wp))
        return wp

    async def _watch(self, wp: WorkerProcess) -> None:
        reader = asyncio.create_task(self._read_stderr(wp))
        code = None
        try:
            code = await self._exit_status(wp)
            if not wp.in_process:
                _signal_group(wp.proc.pid, signal.SIGKILL)  # its helpers go with it
            await asyncio.wait({reader}, timeout=STDERR_DRAIN_S)  # what the pipe still holds
        finally:
            # Whatever went wrong above, the worker is forgotten and its exit reported.
            reader.cancel()
            self.workers.pop(wp.worker_id, None)
            if self.ledger is not None and not wp.in_process:
                self.ledger.forget(wp.worker_id)
            if code is not None:
                self._report_exit(wp, code)

    async def _exit_status(self, wp: WorkerProcess) -> int:
        if wp.in_process:
            return await wp.proc.wait()  # no pipes to wait for
        waiting = asyncio.ensure_future(wp.proc.wait())
        try:
            while wp.proc.returncode is None:
                await asyncio.wait({waiting}, timeout=EXIT_POLL_S)
            return wp.proc.returncode
        finally:
            waiting.cancel()

    async def _read_stderr(self, wp: WorkerProcess) -> None:
        assert wp.proc.stderr is not None
        lines = LineSplitter(MAX_LINE_BYTES)
        try:
            while chunk := await wp.proc.stderr.read(_READ_BYTES):
                for raw in lines.feed(chunk):
                    self._stderr_line(wp, raw)
        finally:
            for raw in lines.close():
                self._stderr_line(wp, raw)

    def _stderr_line(self, wp: WorkerProcess, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        wp.stderr_tail.append(line)
        sys.stderr.write(line + "\n")  # workers log JSON lines; pass them through

    def _report_exit(self, wp: WorkerProcess, code: int) -> None:
        report = pool_link_pb2.WorkerExited(worker_id=wp.worker_id, expected=wp.stopping,
                                            stderr_tail="\n".join(wp.stderr_tail))
        if code < 0:
            report.signal = -code
            report.signal_name = signal_name(-code)
        else:
            report.exit_code = code
        if wp.reported_error is not None:
            report.error.CopyFrom(wp.reported_error)
        log.emit("pool_manager", "worker.exited",
                 f"{wp.worker_id} exited" + (f" ({IN_PROCESS})" if wp.in_process else ""),
                 level="info" if wp.stopping else "error", worker_id=wp.worker_id,
                 exit_code=code if code >= 0 else None,
                 signal=report.signal_name or None)
        self.on_exit(report)

    async def stop(self, worker_id: str, *, grace_s: float | None = None, force: bool = False) -> bool:
        wp = self.workers.get(worker_id)
        if wp is None:
            return False
        wp.stopping = True
        if wp.proc.returncode is None:
            self._signal(wp, signal.SIGKILL if force else signal.SIGTERM)
            try:
                await asyncio.wait_for(self._exit_status(wp),
                                       grace_s if grace_s is not None else self.grace_s)
            except asyncio.TimeoutError:
                self._signal(wp, signal.SIGKILL)
                await self._exit_status(wp)
        return True

    def _signal(self, wp: WorkerProcess, sig: int) -> None:
        if wp.in_process:  # its pid and group are this process's own
            wp.proc.send_signal(sig)
        else:
            _signal_group(wp.proc.pid, sig)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(w) for w in list(self.workers)), return_exceptions=True)


def _signal_group(pgid: int, sig: int) -> None:
    # A worker's pgid is its pid (start_new_session). The kernel does not reuse that id
    # while any process of the group is alive, so this reaches only the worker and what
    # it started, also just after the worker itself was reaped.
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already


def signal_name(signum: int) -> str:
    """"SIGKILL"; real-time signals, which `signal.Signals` does not name, as
    "SIGRTMIN+2"; anything else as "signal N"."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


class LineSplitter:
    """Chunks of a byte stream in, its lines out (without the newline). A line longer
    than `limit` bytes comes out cut to `limit` with CUT_MARK after it, and the rest of
    it is dropped, so one huge line costs no more memory than a short one."""

    CUT_MARK = b" [...cut]"

    def __init__(self, limit: int):
        self.limit = limit
        self._line = b""
        self._cut = False

    def feed(self, data: bytes) -> list[bytes]:
        *ended, rest = data.split(b"\n")
        out = []
        for part in ended:
            self._add(part)
            out.append(self._take())
        self._add(rest)
        return out

    def close(self) -> list[bytes]:
        """The last line, when the stream did not end with a newline."""
        return [self._take()] if self._line or self._cut else []

    def _add(self, part: bytes) -> None:
        room = self.limit - len(self._line)
        if len(part) > room:
            self._cut = True
        self._line += part[:room]

    def _take(self) -> bytes:
        line = self._line + (self.CUT_MARK if self._cut else b"")
        self._line, self._cut = b"", False
        return line
