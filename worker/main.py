"""The worker process: one model, loaded at start, served until SIGTERM/SIGINT.

    python -m worker --worker-id ID --model-ref file:/abs/path [--engine hf]
                     [--devices cpu|GPU-UUID[,...]] [--callback 127.0.0.1:9200]
                     [--listen 127.0.0.1:0] [--threads 1] [--option key=value ...]
                     [--tls-key K --tls-cert C --tls-ca CA --pool-id P]

With --tls-*, the worker serves with its pool's certificate (mTLS: only the
orchestrator's certificate may call it) and calls back to the pool manager with it.

Startup order is a contract with the pool manager: load the model, start the gRPC
server (WorkerService + health + reflection), and only then ReportReady, so whatever
the pool manager announces is already serving. A worker that cannot start calls
ReportFailure (when the callback answers), writes ONE line `worker: CODE: reason` to
stderr and exits 2; nothing else is written to stderr before it is ready, so that line
is what the pool manager reads back. Once ready, stderr carries JSON log lines.

`run` is that flow without the process around it (signals, orphan watch, exit status):
the pool manager's in-process sim workers (pool_manager/inprocess.py) run it too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from common import pki, tls
from common.errors import OrchError
from common.grpc_server import Server, channel
from common.heap import freeze_startup_heap
from common.log import emit
from llama_orch.v1 import worker_callback_pb2, worker_callback_pb2_grpc

if TYPE_CHECKING:
    from worker.engines.base import Engine

_T0 = time.monotonic()  # as close to process start as this module gets
_PARENT = os.getppid()  # taken at start: the parent may die while we load
EXIT_FAILED = 2
READY_TIMEOUT_S = 30.0
FAILURE_TIMEOUT_S = 5.0
ORPHAN_POLL_S = 1.0


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's two-line usage dump would break the contract
        raise OrchError("CONFIG_INVALID", message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a bad one raises OrchError CONFIG_INVALID."""
    ap = _ArgumentParser(prog="python -m worker", description="llama-orch worker (one model)")
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--model-ref", required=True,
                    help="the canonical ref (file:/abs/path, or hf:... with --model-dir)")
    ap.add_argument("--model-dir", default="",
                    help="local folder holding the ref's files (the pool manager's cache)")
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--devices", default="cpu", help="cpu, or GPU UUIDs (comma-separated)")
    ap.add_argument("--callback", default="127.0.0.1:9200", help="WorkerCallbackService address")
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (0 = ephemeral) or unix:")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tls-key", default="", help="the pool's key (PEM); with --tls-cert/--tls-ca")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-ca", default="")
    ap.add_argument("--pool-id", default="", help="the pool whose certificate the callback shows")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    tls_flags = (args.tls_key, args.tls_cert, args.tls_ca)
    if any(tls_flags) and not (all(tls_flags) and args.pool_id):
        ap.error("--tls-key, --tls-cert, --tls-ca and --pool-id go together")
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not args.devices:
        ap.error("--devices is empty")
    return args


def model_path(ref: str, model_dir: str = "") -> Path:
    """The folder to load: --model-dir when the pool manager fetched the ref into its
    cache, else the folder of a `file:/abs/path` ref; every other form is refused."""
    if model_dir:
        if not os.path.isabs(model_dir) or not Path(model_dir).is_dir():
            raise OrchError("INVALID_MODEL_REF", f"no model folder at {model_dir!r}",
                            param="model_dir")
        return Path(model_dir)
    if not ref.startswith("file:"):
        raise OrchError("INVALID_MODEL_REF", f"the worker loads only file:/abs/path refs, "
                                             f"not {ref!r}", param="model_ref")
    path = ref.removeprefix("file:")
    path = path.removeprefix("//") if path.startswith("///") else path
    if not os.path.isabs(path):
        raise OrchError("INVALID_MODEL_REF", f"{ref!r} is not an absolute path", param="model_ref")
    if not Path(path).is_dir():
        raise OrchError("INVALID_MODEL_REF", f"no model folder at {path}", param="model_ref")
    return Path(path)


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OrchError("ENGINE_OPTION_REJECTED", f"option {pair!r} is not key=value",
                            param=pair)
        options[key.strip()] = value.strip()
    return options


def _tls(args: argparse.Namespace) -> tls.Material | None:
    return tls.Material(Path(args.tls_key), Path(args.tls_cert), Path(args.tls_ca)) \
        if getattr(args, "tls_key", "") else None


def _callback_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """To the pool manager: with the pool's certificate, pinning the pool's name."""
    m = _tls(args)
    return tls.channel(args.callback, m, pki.pool_dns(args.pool_id)) if m else channel(args.callback)


def _die(err: OrchError) -> None:
    reason = " ".join(err.message.split())
    sys.stderr.write(f"worker: {err.code}: {reason}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_FAILED)


async def _report_failure(args: argparse.Namespace, err: OrchError) -> None:
    try:
        async with _callback_channel(args) as ch:
            await worker_callback_pb2_grpc.WorkerCallbackServiceStub(ch).ReportFailure(
                worker_callback_pb2.ReportFailureRequest(worker_id=args.worker_id,
                                                         error=err.to_detail()),
                timeout=FAILURE_TIMEOUT_S)
    except grpc.RpcError:
        pass  # nobody listening: the exit status and the stderr line still tell


async def _in_daemon_thread(fn):
    # A daemon thread, not the default executor: a SIGTERM during a long load must
    # not wait for the load to finish before the process can exit.
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run():
        try:
            result, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop as is
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(lambda: done.done() or (
                done.set_exception(error) if error else done.set_result(result)))
        except RuntimeError:
            pass  # the loop is gone: the process is exiting anyway

    threading.Thread(target=run, name="load", daemon=True).start()
    return await done


def _endpoint(listen: str, port: int) -> str:
    if listen.startswith("unix:"):
        return listen
    host = listen.rpartition(":")[0]
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


async def _load_engine(args: argparse.Namespace, stop: asyncio.Event,
                       prepare: Callable[[Engine], None] | None) -> Engine | None:
    """The loaded engine, or None when told to stop first; a failure is reported to the
    callback and raised."""
    from worker.engines import create

    try:
        engine = create(args.engine, model_path(args.model_ref, args.model_dir), args.devices,
                        args.threads, parse_options(args.option))
        if prepare is not None:
            prepare(engine)
        load = asyncio.ensure_future(_in_daemon_thread(engine.load))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([load, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not load.done():
            return None
        load.result()
        return engine
    except OrchError as err:
        failure = err
    except Exception as exc:  # noqa: BLE001 - whatever else breaks a load is one code
        failure = OrchError("ENGINE_ERROR", f"{type(exc).__name__}: {exc}")
    await _report_failure(args, failure)
    raise failure


async def _report_ready(args: argparse.Namespace, service, load_ms: int) -> None:
    engine = service.engine
    try:
        async with _callback_channel(args) as ch:
            await worker_callback_pb2_grpc.WorkerCallbackServiceStub(ch).ReportReady(
                worker_callback_pb2.ReportReadyRequest(
                    worker_id=args.worker_id, model_ref=args.model_ref,
                    device_bytes=engine.device_bytes(), endpoint=service.identity.endpoint,
                    engine=engine.name, engine_version=engine.version,
                    model_digest=engine.digest, pid=service.identity.pid,
                    context_length=engine.context_length, slots=service.slots,
                    load_ms=load_ms),
                timeout=READY_TIMEOUT_S, wait_for_ready=True)
    except grpc.RpcError as exc:
        raise OrchError("UNAVAILABLE", f"callback {args.callback} did not take ReportReady: "
                                       f"{OrchError.from_rpc_error(exc).message}") from None


async def _stop_when_orphaned(stop: asyncio.Event, worker_id: str) -> None:
    # A pool manager killed with SIGKILL cannot stop its workers; one that outlives it
    # would hold its devices forever. Being re-parented is the sign.
    while os.getppid() == _PARENT:
        await asyncio.sleep(ORPHAN_POLL_S)
    stop.set()  # first: stderr was a pipe to the dead parent, so logging may fail
    emit("worker", "worker.orphaned", "parent process exited; stopping", level="warning",
         worker_id=worker_id)


async def run(args: argparse.Namespace, stop: asyncio.Event, *, started: float = _T0,
              prepare: Callable[[Engine], None] | None = None,
              on_ready: Callable[[], None] | None = None) -> int:
    """A worker's life without its process: load, serve, ReportReady, serve until `stop`
    is set, shut down (running jobs cancelled, 5 s for streams to end). Returns 0.

    A start that fails is reported to the callback (when it answers) and raised as
    OrchError. `started` is when the start began (for load_ms); `prepare(engine)` runs
    before the load; `on_ready()` runs once ReportReady was taken. Cancelling the task
    that runs this stops the server at once (a forced stop).
    """
    engine = await _load_engine(args, stop, prepare)
    if engine is None:
        return 0  # told to stop while loading: nothing to report

    from llama_orch.v1 import worker_pb2_grpc
    from worker.service import SERVICE_NAME, Identity, WorkerService

    service = WorkerService(engine, Identity(args.worker_id, args.model_ref, args.devices))
    server = Server([SERVICE_NAME])
    material, credentials, servicer = _tls(args), None, service
    try:
        if material is not None:  # the pool's identity; only the orchestrator may call
            try:
                credentials = tls.server_credentials(material)
                ca = pki.load_cert(material.ca.read_bytes())
            except (OSError, ValueError) as exc:
                raise OrchError("CONFIG_INVALID", f"cannot read the pool's TLS files: {exc}",
                                param="tls") from None
            servicer = tls.guard(service, tls.PeerCheck(ca), {"orchestrator"}, "WorkerService")
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server.grpc)
        service.identity.endpoint = _endpoint(args.listen, server.bind(args.listen, credentials))
    except OrchError as err:
        await _report_failure(args, err)
        raise
    await server.start()
    try:
        load_ms = int((time.monotonic() - started) * 1000)
        await _report_ready(args, service, load_ms)  # no pool manager: do not linger
        if on_ready is not None:
            on_ready()
        freeze_startup_heap("worker")  # the model and engine are loaded by now
        emit("worker", "worker.ready", worker_id=args.worker_id,
             endpoint=service.identity.endpoint, model_ref=args.model_ref, engine=engine.name,
             engine_version=engine.version, device=engine.device,
             context_length=engine.context_length, slots=service.slots, load_ms=load_ms)
        await stop.wait()
        emit("worker", "worker.stopping", worker_id=args.worker_id)
        service.cancel_all("worker stopping")
        await server.stop(grace=5.0)
    finally:
        await server.stop(0)  # done already, unless the start failed or this was cancelled
        engine.close()
    emit("worker", "worker.stopped", worker_id=args.worker_id)
    return 0


async def serve(args: argparse.Namespace) -> int:
    """The process: `run` until SIGTERM/SIGINT or until the parent is gone."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = asyncio.ensure_future(_stop_when_orphaned(stop, args.worker_id))
    try:
        return await run(args, stop, on_ready=_log_held_warnings)
    except OrchError as err:
        _die(err)
    finally:
        orphan_watch.cancel()


# Libraries warn on stderr while loading; held until ready (the one-line contract),
# then logged as JSON like everything else.
_held_warnings: list[str] | None = []


def _showwarning(message, category, filename, lineno, file=None, line=None):
    text = f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})"
    if _held_warnings is not None:
        _held_warnings.append(text)
    else:
        emit("worker", "worker.warning", text, level="warning")


def _log_held_warnings() -> None:
    global _held_warnings
    held, _held_warnings = _held_warnings or [], None
    for text in held:
        emit("worker", "worker.warning", text, level="warning")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except OrchError as err:
        _die(err)
    # Before torch starts: thread pools sized once; cuBLAS needs this for determinism;
    # nothing may reach the network; library chatter stays off stderr.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _showwarning
    return asyncio.run(serve(args))
