"""Start real llama-orch processes for end-to-end tests, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def start_daemon(root: Path, log_name: str, module: str, *args: str) -> subprocess.Popen:
    """One llama-orch daemon as its own process (`python -m module args`), logging to a file."""
    log = open(root / log_name, "ab")
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=log,
                            stderr=subprocess.STDOUT)


def wait_serving(address: str, timeout: float = 60) -> None:
    """Until a gRPC server answers at `address`."""
    import grpc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as ch:
                grpc.channel_ready_future(ch).result(timeout=1)
                return
        except grpc.FutureTimeoutError:
            time.sleep(0.2)
    raise TimeoutError(address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_with(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and alive(int(entry)):
            found.append(int(entry))
    return found


PROMPT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def sim_model(folder: Path, settings: dict) -> Path:
    """A `sim` model in `folder`: the tiny model's prompt files (config, tokenizer, chat
    template: what admission reads) and sim.json with `settings` (worker/engines/sim.py).
    Created with its parents; an existing folder is filled again."""
    import json
    import shutil

    from orchestrator.catalog import TINY_PATH
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROMPT_FILES:
        shutil.copy(TINY_PATH / name, folder / name)
    (folder / "sim.json").write_text(json.dumps(settings))
    return folder


def sim_config(root: Path, devices: dict[str, int], models: dict[str, tuple[int, int]]) -> str:
    """Config lines (for Stack.extra_config: inside [pool], then new tables) declaring
    simulated devices {id: bytes} and `sim` models {name: (devices, bytes per device)},
    each a copy of the tiny model's prompt files with near-instant sim timings. Sizes
    in TiB keep the host's RAM (every pool's `cpu` device) out of placement."""
    lines = [f'[[pool.devices]]\nid = "{d}"\nmemory_bytes = {size}\n'
             for d, size in devices.items()]
    for name, (count, memory) in models.items():
        folder = root / "models" / name
        sim_model(folder, {
            "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0})
        lines.append(f'[models.{name}]\nref = "file:{folder}"\nengine = "sim"\n'
                     f"devices = {count}\nmemory_bytes = {memory}\n")
    return "\n".join(lines)


@dataclass
class Stack:
    root: Path
    gateway_port: int = field(default_factory=free_port)
    orchestrator_port: int = field(default_factory=free_port)
    pool_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra_config: str = ""  # appended at the end (new tables)
    orchestrator_extra: str = ""  # lines inside [orchestrator]
    env: dict[str, str] = field(default_factory=dict)  # more environment for `up`
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def orchestrator(self) -> str:
        return f"127.0.0.1:{self.orchestrator_port}"

    @property
    def config_path(self) -> Path:
        return self.root / "llama-orch.toml"

    def write_config(self) -> Path:
        self.config_path.write_text(f"""
data_dir = "{self.root / 'data'}"
[gateway]
listen = "127.0.0.1:{self.gateway_port}"
[orchestrator]
listen = "127.0.0.1:{self.orchestrator_port}"
metrics_listen = "127.0.0.1:{self.metrics_port}"
{self.orchestrator_extra}
[pool]
listen = "127.0.0.1:{self.pool_port}"
heartbeat_ms = 500
{self.extra_config}
""")
        return self.config_path

    def start(self, timeout: float = 120.0) -> "Stack":
        self.write_config()
        self.log = open(self.root / "up.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-orch up exited early:\n{self.logs()[-3000:]}")
            # `up` announces itself once the gateway and the orchestrator both serve.
            if "llama-orch is up" in self.logs():
                return self
            time.sleep(0.25)
        raise TimeoutError(f"stack not healthy in {timeout} s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return (self.root / "up.log").read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
