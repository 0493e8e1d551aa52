"""In-process `sim` workers, for scale tests with hundreds of simulated workers.

With `pool.sim_in_process = true` the supervisor runs each worker whose engine is
`sim` as an asyncio task in the pool manager instead of as a process (a sim worker
process costs ~50 MB, so 1,000 of them do not fit one machine). Every other engine
always runs as a process. Never a default; the supervisor's log lines say
"in-process (simulated)".

Each one runs the worker's own flow, `worker.main.run`, from the same command line a
process gets: its own gRPC server on 127.0.0.1:0 (WorkerService over SimEngine, health,
reflection), serving before ReportReady reaches this pool manager's callback server.
`InProcessWorker` has the part of asyncio.subprocess.Process the supervisor uses
(pid, returncode, stderr, wait, send_signal, kill), and ends the way a process would:

    send_signal(SIGTERM)   graceful: running jobs cancelled, streams get 5 s   -> exit 0
    kill() / SIGKILL       forced: the server stops at once, streams break     -> signal 9
    crash_after_tokens     only this worker ends, streams break (no os._exit)  -> exit 13
    hang_after_tokens      only this worker's streams hang
    start failure          ReportFailure, one `worker: CODE: reason` line      -> exit 2

Its pid is the pool manager's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from common import log
from common.errors import OrchError
from worker import main as worker_main
from worker.engines.base import Engine

EXIT_BUG = 1  # the flow raised something unexpected: reported like a crashed process


class InProcessWorker:
    """One sim worker as a task in this process; `argv` as for `python -m worker`."""

    def __init__(self, argv: list[str]):
        self.pid = os.getpid()
        self.returncode: int | None = None
        self.stderr = asyncio.StreamReader()  # only the one-line start failure, or a crash
        self._stop = asyncio.Event()
        self._forced = -signal.SIGKILL  # exit status when the task is cancelled
        self._task = asyncio.create_task(self._run(argv, time.monotonic()))
        self._task.add_done_callback(self._finish)

    async def _run(self, argv: list[str], started: float) -> int:
        try:
            args = worker_main.parse_args(argv)
            self._task.set_name(f"worker {args.worker_id} (in-process, simulated)")
            return await worker_main.run(args, self._stop, started=started,
                                         prepare=self._prepare)
        except OrchError as err:
            self._line(f"worker: {err.code}: {' '.join(err.message.split())}")
            return worker_main.EXIT_FAILED

    def _prepare(self, engine: Engine) -> None:
        engine.crash = self._crash  # sim only: the supervisor runs no other engine here

    def _crash(self, status: int) -> None:
        if self.returncode is None and not self._task.done():
            self._line(f"worker: simulated crash, exit status {status} (in-process)")
            self._forced = status
            self._task.cancel()

    def _line(self, text: str) -> None:
        if self.returncode is None:  # the stream ends (feed_eof) with the returncode
            self.stderr.feed_data(text.encode() + b"\n")

    def _finish(self, task: asyncio.Task) -> None:
        if self.returncode is not None:
            return
        if task.cancelled():
            self.returncode = self._forced
        elif task.exception() is not None:
            exc = task.exception()
            log.emit("pool_manager", "worker.in_process_error", repr(exc), level="error")
            self._line(f"worker: INTERNAL: {type(exc).__name__}: {exc}")
            self.returncode = EXIT_BUG
        else:
            self.returncode = task.result()
        self.stderr.feed_eof()

    async def wait(self) -> int:
        # asyncio.wait, not shield: a waiter that gives up (a stop's grace expiring)
        # must not cancel the worker, and a cancelled worker must not raise here.
        await asyncio.wait([self._task])
        self._finish(self._task)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.kill()
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self._stop.set()

    def kill(self) -> None:
        if not self._task.done():
            self._task.cancel()
