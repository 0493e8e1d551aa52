"""client.admin: thin wrappers for AdminService, one method per RPC.

Arguments mirror the request messages; results are the response's payload as plain
Python (dicts of the message fields, enums by name, times as epoch seconds), except
start_worker, which returns a Worker record. RPCs the orchestrator does not implement
yet raise UnimplementedError (code "UNIMPLEMENTED"); outside home mode the calls need
an admin-scoped api_key.

Every method takes `timeout` (seconds) for that call; None means the client's `timeout`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_orch_sdk._convert import plain
from llama_orch_sdk._gen.llama_orch.v1 import admin_pb2
from llama_orch_sdk.records import Worker
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource

_SCOPES = {"client": admin_pb2.API_KEY_SCOPE_CLIENT, "admin": admin_pb2.API_KEY_SCOPE_ADMIN}


def _payload(name: str) -> Callable[[Any], Any]:
    return lambda reply: plain(reply)[name]


def _nothing(reply: Any) -> None:
    return None


def _quota(quota: Mapping[str, Any] | None) -> admin_pb2.Quota | None:
    if quota is None:
        return None
    try:
        return admin_pb2.Quota(**quota)
    except (TypeError, ValueError) as exc:
        raise _spec.bad(f"quota: {exc}", "quota") from None


def _ids(device_ids: Sequence[str]) -> list[str]:
    # A lone string is a sequence too: list("gpu0") would be four devices.
    if isinstance(device_ids, str) or not all(isinstance(d, str) for d in device_ids):
        raise _spec.bad(f"device_ids must be a list of strings, got {device_ids!r}",
                        "device_ids")
    return list(device_ids)


def _when(request: Any, name: str, value: datetime.datetime | float | None) -> None:
    if value is None:
        return
    if isinstance(value, datetime.datetime):
        getattr(request, name).FromDatetime(value)
    else:
        getattr(request, name).FromNanoseconds(int(value * 1e9))


class Admin(Resource):
    def _call(self, rpc: str, request: Any, then: Callable[[Any], Any],
              timeout: float | None) -> Any:
        return self._t.unary(getattr(self._t.admin, rpc), request, then, timeout=timeout)

    # ---- pins, workers, pools, models ---------------------------------------------------

    def pin_model(self, model: str, *, pool_id: str = "", device_ids: Sequence[str] = (),
                  timeout: float | None = None) -> dict[str, Any]:
        """Never evict `model` from these devices; returns the pin."""
        return self._call("PinModel", admin_pb2.PinModelRequest(
            model=model, pool_id=pool_id, device_ids=_ids(device_ids)), _payload("pin"),
            timeout)

    def unpin_model(self, model: str, *, pool_id: str = "",
                    timeout: float | None = None) -> None:
        return self._call("UnpinModel", admin_pb2.UnpinModelRequest(model=model, pool_id=pool_id),
                          _nothing, timeout)

    def start_worker(self, model: str, *, pool_id: str = "", device_ids: Sequence[str] = (),
                     engine: str = "", engine_options: Mapping[str, str] | None = None,
                     timeout: float | None = None) -> Worker:
        """Start a worker for `model` (on the given pool and devices, or where the
        orchestrator chooses); returns it once the pool has started it. On a GPU that
        includes loading the weights, which can take minutes for a large model: pass a
        `timeout` above the client's default (60 s) then."""
        request = admin_pb2.StartWorkerRequest(model=model, pool_id=pool_id,
                                               device_ids=_ids(device_ids), engine=engine,
                                               engine_options=dict(engine_options or {}))
        return self._call("StartWorker", request, lambda r: Worker._from_proto(r.worker),
                          timeout)

    def stop_worker(self, worker_id: str, *, force: bool = False,
                    timeout: float | None = None) -> None:
        return self._call("StopWorker", admin_pb2.StopWorkerRequest(worker_id=worker_id,
                                                                    force=force),
                          _nothing, timeout)

    def drain_pool(self, pool_id: str, *, drain: bool = True,
                   timeout: float | None = None) -> dict[str, Any]:
        """Drain (or, with drain=False, undrain) a pool; returns the pool."""
        return self._call("DrainPool", admin_pb2.DrainPoolRequest(pool_id=pool_id, drain=drain),
                          _payload("pool"), timeout)

    def preload_model(self, model: str, *, pool_id: str = "",
                      timeout: float | None = None) -> None:
        """Ask the pool (none named: every pool) to keep the model's files in RAM, ahead
        of a worker start. For a large model on a GPU host (fetching and reading tens of
        GB) that can take minutes: pass a `timeout` above the client's default (60 s)."""
        return self._call("PreloadModel",
                          admin_pb2.PreloadModelRequest(model=model, pool_id=pool_id), _nothing,
                          timeout)

    def evict_model(self, model: str, *, pool_id: str = "", from_disk: bool = False,
                    timeout: float | None = None) -> None:
        return self._call("EvictModel", admin_pb2.EvictModelRequest(
            model=model, pool_id=pool_id, from_disk=from_disk), _nothing, timeout)

    # ---- scheduler policy ----------------------------------------------------------------

    def get_policy(self, *, timeout: float | None = None) -> dict[str, Any]:
        """{"active": the active policy version, "editable": whether it may change}."""
        return self._call("GetPolicy", admin_pb2.GetPolicyRequest(), plain, timeout)

    def list_policy_versions(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._call("ListPolicyVersions", admin_pb2.ListPolicyVersionsRequest(),
                          _payload("versions"), timeout)

    def validate_policy(self, source: str, *, timeout: float | None = None) -> dict[str, Any]:
        """{"ok": bool, "problems": [{"line", "message"}]}."""
        return self._call("ValidatePolicy", admin_pb2.ValidatePolicyRequest(source=source),
                          plain, timeout)

    def dry_run_policy(self, source: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The policy's decisions and the built-in's against the live snapshot."""
        return self._call("DryRunPolicy", admin_pb2.DryRunPolicyRequest(source=source), plain,
                          timeout)

    def activate_policy(self, *, source: str = "", version: int = 0, builtin: bool = False,
                        timeout: float | None = None) -> dict[str, Any]:
        """Activate new source, roll back to an earlier version, or the built-in policy."""
        return self._call("ActivatePolicy", admin_pb2.ActivatePolicyRequest(
            source=source, version=version, builtin=builtin), _payload("active"), timeout)

    # ---- tenants, quotas, credit, API keys -----------------------------------------------

    def create_tenant(self, name: str, *, quota: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        return self._call("CreateTenant", admin_pb2.CreateTenantRequest(
            name=name, quota=_quota(quota)), _payload("tenant"), timeout)

    def list_tenants(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._call("ListTenants", admin_pb2.ListTenantsRequest(), _payload("tenants"),
                          timeout)

    def set_quota(self, tenant_id: str, quota: Mapping[str, Any], *,
                  timeout: float | None = None) -> dict[str, Any]:
        """quota: max_concurrent_jobs, max_vram_bytes, token_budget, auto_refill,
        submit_rate_per_second. Returns the tenant."""
        return self._call("SetQuota", admin_pb2.SetQuotaRequest(
            tenant_id=tenant_id, quota=_quota(quota)), _payload("tenant"), timeout)

    def add_credit(self, tenant_id: str, tokens: int, *,
                   timeout: float | None = None) -> dict[str, Any]:
        """Add `tokens` to the tenant's credit (negative: take them away); returns the
        tenant."""
        tokens = _spec.checked("tokens", tokens, int, minimum=None)
        return self._call("AddCredit", admin_pb2.AddCreditRequest(tenant_id=tenant_id,
                                                                  tokens=tokens),
                          _payload("tenant"), timeout)

    def create_api_key(self, tenant_id: str, *, scope: str = "client", name: str = "",
                       timeout: float | None = None) -> dict[str, Any]:
        """A new key; its "secret" is in this answer only."""
        if scope not in _SCOPES:
            raise _spec.bad(f"scope must be 'client' or 'admin', got {scope!r}", "scope")
        return self._call("CreateApiKey", admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant_id, scope=_SCOPES[scope], name=name), _payload("key"), timeout)

    def list_api_keys(self, tenant_id: str = "", *,
                      timeout: float | None = None) -> list[dict[str, Any]]:
        return self._call("ListApiKeys", admin_pb2.ListApiKeysRequest(tenant_id=tenant_id),
                          _payload("keys"), timeout)

    def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> None:
        return self._call("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id),
                          _nothing, timeout)

    # ---- pool enrolment --------------------------------------------------------------------

    def create_join_token(self, pool_id: str, *, ttl_seconds: int = 0,
                          timeout: float | None = None) -> dict[str, Any]:
        """{"token", "expires_at"}: single-use, bound to pool_id."""
        return self._call("CreateJoinToken", admin_pb2.CreateJoinTokenRequest(
            pool_id=pool_id, ttl_seconds=ttl_seconds), plain, timeout)

    def enroll_provider_key(self, provider_id: str, public_key: bytes, *,
                            timeout: float | None = None) -> str:
        """Enrol a provider's raw 32-byte Ed25519 public key; returns its key id."""
        return self._call("EnrollProviderKey", admin_pb2.EnrollProviderKeyRequest(
            provider_id=provider_id, public_key=public_key), lambda r: r.provider_key_id,
            timeout)

    def revoke_certificate(self, serial_hex: str, *, reason: str = "",
                           timeout: float | None = None) -> None:
        return self._call("RevokeCertificate", admin_pb2.RevokeCertificateRequest(
            serial_hex=serial_hex, reason=reason), _nothing, timeout)

    # ---- usage, earnings, audit ----------------------------------------------------------

    def export_usage(self, *, tenant_id: str = "", start: datetime.datetime | float | None = None,
                     end: datetime.datetime | float | None = None, format: str = "json",
                     timeout: float | None = None) -> dict[str, Any]:
        """{"records": [...], "rendered": the same as JSON or CSV text}."""
        request = admin_pb2.ExportUsageRequest(tenant_id=tenant_id, format=format)
        _when(request, "start", start)
        _when(request, "end", end)
        return self._call("ExportUsage", request, plain, timeout)

    def get_earnings(self, *, start: datetime.datetime | float | None = None,
                     end: datetime.datetime | float | None = None,
                     timeout: float | None = None) -> list[dict[str, Any]]:
        request = admin_pb2.GetEarningsRequest()
        _when(request, "start", start)
        _when(request, "end", end)
        return self._call("GetEarnings", request, _payload("earnings"), timeout)

    def list_audit_entries(self, *, after_id: int = 0, page_size: int = 0,
                           timeout: float | None = None) -> list[dict[str, Any]]:
        return self._call("ListAuditEntries", admin_pb2.ListAuditEntriesRequest(
            after_id=after_id, page_size=page_size), _payload("entries"), timeout)
