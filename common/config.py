"""Configuration: defaults (ARCHITECTURE §9), overridden by a TOML file, then by flags.

    mode = "home"                      # home | lab | platform
    data_dir = "~/.local/share/llama-orch"
    [gateway]      listen = "127.0.0.1:8080"
    [orchestrator] listen = "127.0.0.1:9100"
    [pool]         id = "local"   listen = "127.0.0.1:9200"   orchestrator = "127.0.0.1:9100"
                   heartbeat_ms = 2000
    [[pool.devices]]  id = "sim-0"  memory_bytes = 8e9     # declared, i.e. simulated
    [models.NAME]  ref = "file:/abs/path"  engine = "hf"

Unknown keys and wrong types are refused with the dotted key named, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError

MODES = ("home", "lab", "platform")
_ORIGIN = re.compile(r"https?://[^/\s]+")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llama-orch"


@dataclass
class GatewayConfig:
    listen: str = "127.0.0.1:8080"
    orchestrator: str = "127.0.0.1:9100"
    # Request bodies over this size get 413.
    max_body_bytes: int = 4 * 1024 * 1024
    # The most choices (`n`) one generation request may ask for; above it is a 400.
    max_n: int = 8
    # Origins whose browser pages may call the gateway (CORS), e.g.
    # ["http://localhost:3000"], or ["*"] for any; empty: no CORS headers at all.
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class OrchestratorConfig:
    listen: str = "127.0.0.1:9100"
    # How long a request waits for a worker to start before failing.
    worker_start_timeout_s: float = 120.0
    # A pool is marked unavailable after this many missed heartbeats.
    missed_heartbeats: int = 3
    default_deadline_ms: int = 5 * 60_000
    max_deadline_ms: int = 30 * 60_000
    cancel_grace_s: float = 5.0
    # Prometheus text for the orchestrator's metrics (the gateway's /metrics includes it):
    # plain HTTP with no authentication, so loopback by default.
    metrics_listen: str = "127.0.0.1:9101"
    # Platform mode refuses a non-loopback metrics_listen unless this is true (the
    # operator's explicit choice to expose the unauthenticated endpoint, e.g. to a
    # Prometheus behind a firewall). Home mode has security.allow_non_loopback instead.
    metrics_allow_non_loopback: bool = False
    # State store URL; empty means SQLite in data_dir (sqlite+aiosqlite:///.../state.db).
    database: str = ""
    retry_max_attempts: int = 5
    retry_initial_s: float = 1.0
    retry_multiplier: float = 2.0
    retry_cap_s: float = 60.0
    # Queue optimizer: wakes while the queue is deeper than the threshold.
    optimizer_threshold: int = 10
    optimizer_interval_s: float = 30.0
    optimizer_budget_s: float = 5.0
    # A request that sets no max_tokens generates up to this many; 0: to the end of the
    # model's context, as OpenAI does (a cap here is the operator's choice, not the
    # client's, so it is off by default).
    default_max_tokens: int = 0


@dataclass
class DeviceConfig:
    """A device declared in config. Always simulated: no real hardware is behind it."""
    id: str = ""
    memory_bytes: int = 0
    name: str = "simulated device"


@dataclass
class PoolConfig:
    id: str = "local"
    listen: str = "127.0.0.1:9200"
    orchestrator: str = "127.0.0.1:9100"
    heartbeat_ms: int = 2000
    devices: list[DeviceConfig] = field(default_factory=list)
    # Graceful stop waits this long before SIGKILL.
    stop_grace_s: float = 5.0
    # Threads each CPU worker uses for torch; fixed so CPU results are reproducible.
    cpu_threads: int = 1
    # Model cache (hf: downloads). Empty means <data_dir>/models. 0 budget = no limit.
    cache_dir: str = ""
    cache_budget_bytes: int = 0
    # Models kept in RAM / page cache for fast worker starts ("hot-loading", on the
    # orchestrator's command). -1 = a quarter of this machine's RAM; 0 = off.
    ram_budget_bytes: int = -1
    # Run `sim` workers inside the pool manager (one gRPC server each) instead of one OS
    # process each: only for scale tests with hundreds of simulated workers. Never a default.
    sim_in_process: bool = False


@dataclass
class ModelConfig:
    ref: str = ""
    engine: str = "hf"
    context_length: int = 0
    # Tensor parallelism: devices in one worker's mask.
    devices: int = 1
    # Memory per device (weights + KV reserve); 0 = estimated from the weights' size.
    memory_bytes: int = 0


_MODE_DEFAULTS = {  # (tls, auth, audit)
    "home": (False, False, "off"),
    "lab": (True, True, "inter-service"),
    "platform": (True, True, "all"),
}
AUDIT_LEVELS = ("off", "inter-service", "all")


@dataclass
class SecurityConfig:
    """ARCHITECTURE §6. Unset (None) settings take the mode's default; in platform mode
    any setting that weakens the matrix is refused at start."""
    # mTLS on the pool link, the worker API and the client API.
    tls: bool | None = None  # home: off; lab: on; platform: on, always
    # Every client request carries an API key (scope client|admin, bound to a tenant).
    auth: bool | None = None  # home: off; lab: on; platform: on, always
    # "off" | "inter-service" | "all"
    audit: str | None = None  # home: off; lab: inter-service; platform: all, always
    # Home mode binds loopback only; this lets an operator bind elsewhere (logged).
    allow_non_loopback: bool = False
    # The orchestrator's CA and this daemon's key/certificate; empty = <data_dir>/pki.
    pki_dir: str = ""
    cert_ttl_s: int = 7 * 24 * 3600
    join_token_ttl_s: int = 3600
    # Signed registrations older (or newer) than this are refused.
    registration_max_skew_s: int = 300
    # Pool managers: the provider's Ed25519 private key (PEM) that signs registrations;
    # required in platform mode (`llama-orch ca provider-keygen` makes one).
    provider_key: str = ""


@dataclass
class SchedulerConfig:
    # "builtin", or the path of an operator's Lua policy (not in platform mode).
    policy: str = "builtin"


@dataclass
class Config:
    mode: str = "home"
    data_dir: Path = field(default_factory=default_data_dir)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @property
    def tenancy(self) -> bool:
        """Tenants, quotas, budgets, billing and provider earnings: platform mode only."""
        return self.mode == "platform"

    def validate(self) -> "Config":
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}",
                              param="mode")
        self._apply_mode()
        for key, addr in (("gateway.listen", self.gateway.listen),
                          ("orchestrator.listen", self.orchestrator.listen),
                          ("orchestrator.metrics_listen", self.orchestrator.metrics_listen),
                          ("pool.listen", self.pool.listen)):
            host, _ = split_address(addr, key)
            if self.mode == "home" and not is_loopback(host) and not self.security.allow_non_loopback:
                raise ConfigError(f"{key}={addr} is not loopback; home mode binds loopback only "
                                  "(set security.allow_non_loopback = true to override)",
                                  param=key)
        o = self.orchestrator
        metrics_host, _ = split_address(o.metrics_listen, "orchestrator.metrics_listen")
        if (self.mode == "platform" and not is_loopback(metrics_host)
                and not o.metrics_allow_non_loopback):
            raise ConfigError(
                f"orchestrator.metrics_listen={o.metrics_listen} is not loopback: in platform "
                "mode the metrics endpoint (plain HTTP, no authentication) binds loopback "
                "unless orchestrator.metrics_allow_non_loopback = true says to expose it",
                param="orchestrator.metrics_listen")
        if o.retry_max_attempts < 1 or o.retry_initial_s <= 0 or o.retry_multiplier < 1 or o.retry_cap_s <= 0:
            raise ConfigError("orchestrator.retry_* must be positive (max_attempts >= 1, multiplier >= 1)",
                              param="orchestrator.retry_max_attempts")
        if o.default_max_tokens < 0:
            raise ConfigError("orchestrator.default_max_tokens must be >= 0 (0: to the end of "
                              "the context)", param="orchestrator.default_max_tokens")
        if not 0 < o.default_deadline_ms <= o.max_deadline_ms:
            raise ConfigError("orchestrator.default_deadline_ms must be in (0, max_deadline_ms]",
                              param="orchestrator.default_deadline_ms")
        for origin in self.gateway.cors_origins:
            # A browser sends its origin without a path: "http://host:3000/" never matches.
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ConfigError(f"gateway.cors_origins: {origin!r} is not an origin "
                                  '(scheme://host[:port], or "*")', param="gateway.cors_origins")
        if self.pool.heartbeat_ms < 100:
            raise ConfigError("pool.heartbeat_ms must be at least 100", param="pool.heartbeat_ms")
        ids = [d.id for d in self.pool.devices]
        if len(set(ids)) != len(ids) or any(not i for i in ids):
            raise ConfigError("pool.devices need unique, non-empty ids", param="pool.devices")
        for name, model in self.models.items():
            if not model.ref:
                raise ConfigError(f"models.{name}.ref is required", param=f"models.{name}.ref")
            if model.devices < 1:
                raise ConfigError(f"models.{name}.devices must be at least 1",
                                  param=f"models.{name}.devices")
            if model.memory_bytes < 0:
                raise ConfigError(f"models.{name}.memory_bytes must not be negative",
                                  param=f"models.{name}.memory_bytes")
        if self.pool.cache_budget_bytes < 0:
            raise ConfigError("pool.cache_budget_bytes must not be negative",
                              param="pool.cache_budget_bytes")
        if self.pool.ram_budget_bytes < -1:
            raise ConfigError("pool.ram_budget_bytes must be -1 (auto), 0 (off) or a size",
                              param="pool.ram_budget_bytes")
        return self

    def _apply_mode(self) -> None:
        """Fill unset security settings from the mode; refuse what weakens platform mode."""
        s = self.security
        tls, auth, audit = _MODE_DEFAULTS[self.mode]
        if s.audit is not None and s.audit not in AUDIT_LEVELS:
            raise ConfigError(f"security.audit must be one of {', '.join(AUDIT_LEVELS)}, not {s.audit!r}",
                              param="security.audit")
        if self.mode == "platform":
            weak = [("security.tls", s.tls is False, "plaintext links would carry strangers' prompts"),
                    ("security.auth", s.auth is False, "every platform request must carry an API key"),
                    ("security.audit", s.audit not in (None, "all"),
                     "platform mode audits every authenticated request"),
                    ("security.allow_non_loopback", False, ""),
                    ("scheduler.policy", self.scheduler.policy != "builtin",
                     "a scripted scheduler policy cannot run in platform mode")]
            for key, bad, why in weak:
                if bad:
                    raise ConfigError(f"{key} cannot be weakened in platform mode: {why}", param=key)
        s.tls = tls if s.tls is None else s.tls
        s.auth = auth if s.auth is None else s.auth
        s.audit = audit if s.audit is None else s.audit
        if s.cert_ttl_s < 3600 or s.join_token_ttl_s < 1 or s.registration_max_skew_s < 1:
            raise ConfigError("security.cert_ttl_s (>= 3600), join_token_ttl_s and "
                              "registration_max_skew_s must be positive", param="security.cert_ttl_s")


def pki_dir(cfg: "Config") -> Path:
    return Path(cfg.security.pki_dir).expanduser() if cfg.security.pki_dir else cfg.data_dir / "pki"


def pool_cache_dir(cfg: "Config") -> Path:
    return Path(cfg.pool.cache_dir).expanduser() if cfg.pool.cache_dir else cfg.data_dir / "models"


def split_address(addr: str, key: str = "address") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(f"{key}={addr!r} is not host:port", param=key)
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a table", param=path)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if key not in known:
            raise ConfigError(f"unknown setting {dotted}", param=dotted)
        kwargs[key] = _coerce(known[key].type, value, dotted)
    return cls(**kwargs)


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _coerce(type_name: Any, value: Any, dotted: str) -> Any:
    t = str(type_name)
    if t == "Path":
        if not isinstance(value, str):
            raise ConfigError(f"{dotted} must be a path string", param=dotted)
        return Path(value).expanduser()
    if t in _TYPES:
        ok = isinstance(value, _TYPES[t]) and not (t != "bool" and isinstance(value, bool))
        if t == "int" and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok:
            raise ConfigError(f"{dotted} must be {t}, got {type(value).__name__}", param=dotted)
        return value
    if t == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{dotted} must be a list of strings", param=dotted)
        return list(value)
    if t == "list[DeviceConfig]":
        if not isinstance(value, list):
            raise ConfigError(f"{dotted} must be a list", param=dotted)
        return [_build(DeviceConfig, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if t == "dict[str, ModelConfig]":
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} must be a table", param=dotted)
        return {k: _build(ModelConfig, v, f"{dotted}.{k}") for k, v in value.items()}
    if t in ("bool | None", "str | None"):
        if not isinstance(value, bool if t.startswith("bool") else str):
            raise ConfigError(f"{dotted} must be {t.split(' ')[0]}, got {type(value).__name__}",
                              param=dotted)
        return value
    cls = {"GatewayConfig": GatewayConfig, "OrchestratorConfig": OrchestratorConfig,
           "PoolConfig": PoolConfig, "SecurityConfig": SecurityConfig,
           "SchedulerConfig": SchedulerConfig}.get(t)
    if cls is not None:
        return _build(cls, value, dotted)
    raise ConfigError(f"{dotted}: unsupported setting type {t}", param=dotted)


def load(path: str | Path | None = None) -> Config:
    """Load and validate; a missing, unreadable or invalid file raises ConfigError."""
    if path is None:
        return Config().validate()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}", param="config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}", param="config") from None
    cfg = _build(Config, data, "")
    assert is_dataclass(cfg)
    # Pool managers and the gateway dial the orchestrator where it listens, unless told
    # otherwise: moving the orchestrator's port in one place moves it everywhere.
    listen = cfg.orchestrator.listen
    if "orchestrator" not in data.get("pool", {}):
        cfg.pool.orchestrator = listen
    if "orchestrator" not in data.get("gateway", {}):
        cfg.gateway.orchestrator = listen
    return cfg.validate()
