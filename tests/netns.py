"""Two "hosts" on one machine for lab-mode tests: network namespaces joined by a veth pair,
and a packet capture on that link.

    with Link() as link:                 # namespaces <prefix>-a / -b, 10.77.0.1 <-> 10.77.0.2
        cap = link.capture("a")          # AF_PACKET on a's end of the veth, in a thread
        subprocess.Popen(link.exec("b") + [sys.executable, ...])   # a process on host b
        s = link.socket("a", socket.AF_INET, socket.SOCK_STREAM)   # a socket on host a
        ...
        frames = cap.stop()
        tcp_streams(frames), udp_payloads(frames), traffic_between(frames, A, B)

The capture is a raw AF_PACKET socket (ETH_P_ALL) bound to one end of the veth pair,
opened inside that namespace by a thread that setns()-es into it: the same frames
tcpdump would see on that interface, with no capture package to install. Every frame
crosses both ends of the pair, so one capture per end sees the whole link (twice:
the test captures both ends). Frames can also be written as a pcap file for Wireshark.

Everything is torn down on exit, failure included: processes still running inside the
namespaces are killed (they can only be this run's), the namespaces deleted (which
deletes the veth pair). Names carry the creating pid, and namespaces left by a run
that was itself killed (its pid is gone) are swept at the next setup.

Needs root and iproute2 (`tools/install_netns_tools.sh`). `python -m tests.netns` also
has the small programs the tests run inside a namespace (see `main`).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PREFIX = "llorch"
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2"}
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
_STALE = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-[ab]$")


class Unavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, no iproute2, no privilege)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (uid 0)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (tools/install_netns_tools.sh)"
    done = _ip("netns", "list", check=False)
    if done.returncode != 0:
        return f"`ip netns` does not work here: {done.stderr.strip()}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still in namespace `ns` (only this run's programs run there)."""
    for _ in range(3):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def sweep_stale() -> list[str]:
    """Delete namespaces a killed earlier run left behind (its pid no longer exists)."""
    swept = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _STALE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            swept.append(name)
    return swept


def in_netns(ns: str, fn):
    """fn() run on a thread that has entered namespace `ns` (setns is per thread for the
    network namespace); its result or exception. Sockets keep the namespace they were
    made in, so a socket made here can be used from any thread afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict = {}

    def run() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
            try:
                box["value"] = fn()
            finally:
                libc.setns(home, CLONE_NEWNET)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            os.close(home)
            os.close(target)

    t = threading.Thread(target=run, name=f"setns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Link:
    """Namespaces `<name>-a` and `<name>-b`, a veth pair between them (10.77.0.1/24 on a,
    10.77.0.2/24 on b), lo up in each. Unique names per run; torn down on exit."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"{PREFIX}-{os.getpid()}-{tag}"
        self.ns = {"a": f"{self.name}-a", "b": f"{self.name}-b"}
        self.veth = {"a": f"lo{tag}a", "b": f"lo{tag}b"}  # interface names: <= 15 chars
        self.addr = dict(ADDR)
        self.created: list[str] = []

    def __enter__(self) -> "Link":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        if why := unavailable():
            raise Unavailable(why)
        sweep_stale()
        for side in ("a", "b"):
            _ip("netns", "add", self.ns[side])
            self.created.append(self.ns[side])
        _ip("link", "add", self.veth["a"], "type", "veth", "peer", "name", self.veth["b"])
        for side in ("a", "b"):
            ns, dev = self.ns[side], self.veth[side]
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addr[side]}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.created:
            _kill_inside(ns)
        for ns in self.created:
            _ip("netns", "del", ns, check=False)
        self.created.clear()
        # If setup failed before the pair moved into a namespace, it is still here.
        _ip("link", "del", self.veth["a"], check=False)

    def exec(self, side: str) -> list[str]:
        """The command prefix that runs a program on host `side`."""
        return ["ip", "netns", "exec", self.ns[side]]

    def socket(self, side: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        return in_netns(self.ns[side], lambda: socket.socket(family, kind, proto))

    def capture(self, side: str) -> "Capture":
        return Capture(self, side)


@dataclass
class Frame:
    ts: float
    outgoing: bool
    raw: bytes
    src: str = ""
    dst: str = ""
    proto: int = 0  # 6 TCP, 17 UDP
    sport: int = 0
    dport: int = 0
    seq: int = 0
    payload: bytes = b""


def parse(ts: float, outgoing: bool, raw: bytes) -> Frame:
    f = Frame(ts, outgoing, raw)
    if len(raw) < 34 or raw[12:14] != b"\x08\x00":  # IPv4 only (ARP, IPv6 ND: ignored)
        return f
    ip = raw[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0] or len(ip)  # 0 in GSO super-frames
    f.proto = ip[9]
    f.src, f.dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    l4 = ip[ihl:max(total, ihl)] if total <= len(ip) else ip[ihl:]
    if f.proto == 6 and len(l4) >= 20:
        f.sport, f.dport, f.seq = struct.unpack("!HHI", l4[:8])
        f.payload = l4[(l4[12] >> 4) * 4:]
    elif f.proto == 17 and len(l4) >= 8:
        f.sport, f.dport = struct.unpack("!HH", l4[:4])
        f.payload = l4[8:]
    return f


class Capture:
    """Every frame on one end of the link, from construction to stop()."""

    def __init__(self, link: Link, side: str):
        self.side, self.dev = side, link.veth[side]

        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind((self.dev, ETH_P_ALL))
            s.settimeout(0.1)
            return s

        self.sock = in_netns(link.ns[side], open_socket)
        self.frames: list[Frame] = []
        self.drops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.dev}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw, addr = self.sock.recvfrom(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                return
            self.frames.append(parse(time.time(), addr[2] == PACKET_OUTGOING, raw))

    def stop(self) -> list[Frame]:
        """The frames; `drops` is then what the kernel could not queue for us (0 means
        the capture is complete)."""
        time.sleep(0.3)  # the last frames in flight
        self._stop.set()
        self._thread.join(5)
        # struct tpacket_stats {tp_packets, tp_drops}; reading it resets it, so only once.
        _, self.drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.sock.close()
        return self.frames

    def write_pcap(self, path: Path) -> Path:
        """The frames as a classic pcap file (Ethernet), for tshark / Wireshark."""
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 18, 1))
            for fr in self.frames:
                sec = int(fr.ts)
                usec = int((fr.ts - sec) * 1e6)
                f.write(struct.pack("<IIII", sec, usec, len(fr.raw), len(fr.raw)))
                f.write(fr.raw)
        return path


FlowKey = tuple[str, int, str, int]  # src, sport, dst, dport


def tcp_streams(frames: list[Frame]) -> dict[FlowKey, bytes]:
    """Each TCP direction's payload bytes in sequence order, retransmissions and
    overlaps dropped, a missing range marked by one NUL byte (so nothing is joined
    across a gap it did not cross)."""
    segments: dict[FlowKey, dict[int, bytes]] = defaultdict(dict)
    for f in frames:
        if f.proto == 6 and f.payload:
            seg = segments[(f.src, f.sport, f.dst, f.dport)]
            if len(f.payload) > len(seg.get(f.seq, b"")):
                seg[f.seq] = f.payload
    out = {}
    for key, seg in segments.items():
        base = next(iter(seg))  # the first segment seen; offsets from it are signed
        rel_of = {seq: ((seq - base + (1 << 31)) % (1 << 32)) - (1 << 31) for seq in seg}
        parts: list[bytes] = []
        cursor: int | None = None
        for seq in sorted(seg, key=rel_of.__getitem__):
            rel, data = rel_of[seq], seg[seq]
            if cursor is not None:
                if rel + len(data) <= cursor:
                    continue  # a retransmission of what is already there
                if rel < cursor:
                    data = data[cursor - rel:]
                elif rel > cursor:
                    parts.append(b"\0")
            parts.append(data)
            cursor = (rel if cursor is None else max(cursor, rel)) + len(data)
        out[key] = b"".join(parts)
    return out


def udp_payloads(frames: list[Frame]) -> list[tuple[FlowKey, bytes]]:
    return [((f.src, f.sport, f.dst, f.dport), f.payload) for f in frames if f.proto == 17]


def traffic_between(frames: list[Frame], a: str, b: str) -> tuple[int, int]:
    """(packets, bytes on the wire) of IPv4 frames between a and b, either direction."""
    hits = [f for f in frames if {f.src, f.dst} == {a, b}]
    return len(hits), sum(len(f.raw) for f in hits)


# Programs the tests run inside a namespace: `python -m tests.netns <what> ...`.

def _pool_manager(worker_host: str, argv: list[str]) -> int:
    """`llama-orch pool-manager ARGV`, with its workers listening on `worker_host`.

    The pool manager starts every worker with `--listen 127.0.0.1:0`
    (pool_manager/supervisor.py) and there is no setting for it, so a worker on another
    host than the orchestrator announces an endpoint the orchestrator cannot reach.
    Until there is one, this rewrites exactly that argument (and nothing else) when the
    pool manager spawns `python -m worker`; once workers listen elsewhere, it does nothing.
    """
    import asyncio

    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    spawn = asyncio.create_subprocess_exec

    async def exec_worker(program, *args, **kwargs):
        args = list(args)
        if args[:2] == ["-m", "worker"] and "--listen" in args:
            i = args.index("--listen") + 1
            if args[i] == "127.0.0.1:0":
                args[i] = f"{worker_host}:0"
        return await spawn(program, *args, **kwargs)

    asyncio.create_subprocess_exec = exec_worker
    from pool_manager.main import main as pool_main
    return pool_main(argv)


def _submit(ns) -> int:
    """Submit one job (the prompt given), wait for it to end, print it and the workers'
    endpoints as JSON."""
    import grpc

    from common import pki
    from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C

    if ns.tls_dir:
        d = Path(ns.tls_dir)
        creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(),
                                             (d / f"client-{ns.client}.key").read_bytes(),
                                             (d / f"client-{ns.client}.crt").read_bytes())
        channel = grpc.secure_channel(ns.target, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)])
    else:
        channel = grpc.insecure_channel(ns.target)
    key = os.environ.get("NETNS_API_KEY", "")
    md = (("authorization", f"Bearer {key}"),) if key else ()
    stub = client_pb2_grpc.ClientServiceStub(channel)
    terminal = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)
    job = stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
        model=ns.model, prompt=ns.prompt, keep_output=True,
        sampling=C.SamplingParams(seed=1, max_tokens=ns.max_tokens))), metadata=md, timeout=60).job
    deadline = time.monotonic() + ns.timeout
    while job.status not in terminal and time.monotonic() < deadline:
        time.sleep(0.2)
        job = stub.GetJob(client_pb2.GetJobRequest(job_id=job.job_id), metadata=md,
                          timeout=30).job
    snap = stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), metadata=md,
                                   timeout=30)
    print(json.dumps({"job_id": job.job_id, "status": C.JobStatus.Name(job.status),
                      "endpoints": [w.endpoint for p in snap.pools for w in p.workers],
                      "pool_id": job.pool_id, "worker_id": job.worker_id,
                      "completion_tokens": job.usage.completion_tokens,
                      "error": f"{job.error.code}: {job.error.message}" if job.error.code else ""}))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pool-manager"]:  # pool-manager --worker-host HOST -- ARGS
        rest = argv[1:]
        host = rest[rest.index("--worker-host") + 1]
        return _pool_manager(host, rest[rest.index("--") + 1:])
    ap = argparse.ArgumentParser(prog="python -m tests.netns")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("submit", help="one job through ClientService (key: NETNS_API_KEY)")
    sp.add_argument("--target", required=True)
    sp.add_argument("--model", required=True)
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--tls-dir", default="", help="where ca.crt and client-NAME.{key,crt} are")
    sp.add_argument("--client", default="tester")
    sp.add_argument("--max-tokens", type=int, default=8)
    sp.add_argument("--timeout", type=float, default=120)
    ns = ap.parse_args(argv)
    return _submit(ns)


if __name__ == "__main__":
    sys.exit(main())
