"""ScriptedAdmin: a test double of the orchestrator's AdminService, and the cluster
snapshot the ScriptedOrchestrator answers GetClusterSnapshot with.

The cluster is one pool "local" with one GPU ("GPU-0") running worker "w-1" of the
catalog's first model. The admin calls answer as the orchestrator does
(orchestrator/admin_api.py), with the same stable codes:

    PinModel      MODEL_NOT_FOUND, INVALID_ARGUMENT (no pool_id), POOL_UNAVAILABLE,
                  DEVICE_NOT_FOUND; remembers the pin
    UnpinModel    forgets the model's pins (on one pool, or all); idempotent
    PreloadModel  MODEL_NOT_FOUND, POOL_UNAVAILABLE
    EvictModel    ... and MODEL_PINNED where the model is pinned
    StartWorker   a "starting" worker "w-2", "w-3", ...; DEVICE_NOT_FOUND
    StopWorker    NOT_FOUND (param worker_id) for an unknown worker
    DrainPool     the pool, "draining" (or "available" to undrain)
    GetPolicy, ListPolicyVersions, ValidatePolicy (a source with "syntax error" has a
                  problem on line 2), DryRunPolicy, ActivatePolicy (a version that
                  never was: NOT_FOUND, param version)

Every call is recorded (`calls`: (rpc, request), `metadata`). An rpc named in
`unimplemented` answers gRPC UNIMPLEMENTED, as the generated base class does; one in
`errors` fails with that OrchError. `lenient`: every model, pool and worker exists
(for schemathesis, so that success responses are exercised too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import admin_pb2, admin_pb2_grpc, client_pb2, common_pb2

from common.errors import OrchError

CREATED = 1_700_000_000
POOL = "local"
DEVICE = "GPU-0"
GiB = 1024**3


def device() -> common_pb2.Device:
    return common_pb2.Device(id=DEVICE, index=0, kind=common_pb2.DEVICE_KIND_GPU,
                             name="NVIDIA H200", memory_total_bytes=140 * GiB,
                             memory_used_bytes=60 * GiB, memory_free_bytes=80 * GiB,
                             utilization_percent=37.5, temperature_c=41.0)


def worker(worker_id: str = "w-1", model_ref: str = "file:/models/tiny",
           state: int = common_pb2.WORKER_STATE_BUSY) -> common_pb2.WorkerInfo:
    w = common_pb2.WorkerInfo(worker_id=worker_id, pool_id=POOL, model_ref=model_ref,
                              engine="hf", device_ids=[DEVICE], state=state,
                              endpoint="unix:/run/w-1", device_bytes={DEVICE: 52 * GiB},
                              pid=4242, active_jobs=1, slots=4, engine_version="4.56.0",
                              model_digest="abc")
    w.started_at.FromSeconds(CREATED)
    return w


def pool(state: int = common_pb2.POOL_STATE_AVAILABLE, workers=None) -> common_pb2.PoolInfo:
    inventory = common_pb2.Inventory(devices=[device()], nvml_status="ok", hostname="box-1",
                                     cpu_count=16, ram_total_bytes=128 * GiB,
                                     ram_available_bytes=90 * GiB, engines=["hf", "sim"],
                                     driver_version="570.1")
    p = common_pb2.PoolInfo(pool_id=POOL, state=state, inventory=inventory,
                            workers=[worker()] if workers is None else workers,
                            address="127.0.0.1:9200", version="0.1.0", models=[
                                common_pb2.ModelResidency(model_ref="file:/models/tiny",
                                                          cached=True, preloaded=True,
                                                          size_bytes=2 * GiB)])
    p.last_heartbeat.FromSeconds(CREATED + 5)
    return p


def cluster_snapshot(models, jobs=()) -> client_pb2.GetClusterSnapshotResponse:
    return client_pb2.GetClusterSnapshotResponse(
        pools=[pool()], mode="home", models=models, active_jobs=list(jobs), queue=[
            client_pb2.QueueDepth(priority=common_pb2.PRIORITY_INTERACTIVE, depth=1),
            client_pb2.QueueDepth(priority=common_pb2.PRIORITY_BATCH, depth=0)])


def policy_version(version: int, language: str = "lua", source: str = "return {}",
                   active: bool = False) -> admin_pb2.PolicyVersion:
    v = admin_pb2.PolicyVersion(version=version, language=language,
                                source="" if language == "builtin" else source,
                                author="admin", active=active)
    v.created_at.FromSeconds(CREATED + version)
    return v


def _now() -> Timestamp:
    t = Timestamp()
    t.FromSeconds(CREATED + 60)
    return t


@dataclass
class ScriptedAdmin(admin_pb2_grpc.AdminServiceServicer):
    models: list[common_pb2.ModelInfo]
    lenient: bool = False
    unimplemented: set[str] = field(default_factory=set)
    errors: dict[str, OrchError] = field(default_factory=dict)
    calls: list[tuple[str, object]] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    pins: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    workers: set[str] = field(default_factory=lambda: {"w-1"})
    versions: list[admin_pb2.PolicyVersion] = field(default_factory=lambda: [
        policy_version(1, "builtin", active=True)])

    async def _begin(self, rpc: str, request, context) -> None:
        self.calls.append((rpc, request))
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        if rpc in self.unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"AdminService/{rpc} is not implemented")
        if rpc in self.errors:
            await self.errors[rpc].abort(context)

    async def _model(self, name: str, context) -> str:
        """The model's canonical ref (by id, alias or ref), or MODEL_NOT_FOUND."""
        for m in self.models:
            if name in (m.id, m.ref, *m.aliases):
                return m.ref
        if self.lenient:
            return name
        await OrchError("MODEL_NOT_FOUND", f"model {name!r} is not in the catalog",
                        param="model").abort(context)

    async def _pool(self, pool_id: str, context) -> None:
        if pool_id and pool_id != POOL and not self.lenient:
            await OrchError("POOL_UNAVAILABLE", f"no pool {pool_id!r} is connected",
                            param="pool_id").abort(context)

    async def _devices(self, device_ids, context) -> list[str]:
        unknown = [d for d in device_ids if d != DEVICE]
        if unknown and not self.lenient:
            await OrchError("DEVICE_NOT_FOUND", f"pool {POOL} has no devices {unknown}",
                            param="device_ids").abort(context)
        return list(device_ids) or [DEVICE]

    # ---- pins and model files ---------------------------------------------------------

    async def PinModel(self, request, context):
        await self._begin("PinModel", request, context)
        ref = await self._model(request.model, context)
        if not request.pool_id:
            await OrchError("INVALID_ARGUMENT", "pool_id is required",
                            param="pool_id").abort(context)
        await self._pool(request.pool_id, context)
        devices = await self._devices(request.device_ids, context)
        self.pins[(ref, request.pool_id)] = devices
        return admin_pb2.PinModelResponse(pin=admin_pb2.Pin(
            model_ref=ref, pool_id=request.pool_id, device_ids=devices, created_at=_now()))

    async def UnpinModel(self, request, context):
        await self._begin("UnpinModel", request, context)
        ref = await self._model(request.model, context)
        for key in [k for k in self.pins if k[0] == ref and request.pool_id in ("", k[1])]:
            del self.pins[key]
        return admin_pb2.UnpinModelResponse()

    async def PreloadModel(self, request, context):
        await self._begin("PreloadModel", request, context)
        await self._model(request.model, context)
        await self._pool(request.pool_id, context)
        return admin_pb2.PreloadModelResponse()

    async def EvictModel(self, request, context):
        await self._begin("EvictModel", request, context)
        ref = await self._model(request.model, context)
        await self._pool(request.pool_id, context)
        if on := sorted(p for r, p in self.pins if r == ref and request.pool_id in ("", p)):
            await OrchError("MODEL_PINNED", f"{request.model} is pinned on {', '.join(on)}; "
                            "unpin it first", param="model").abort(context)
        return admin_pb2.EvictModelResponse()

    # ---- workers and pools ----------------------------------------------------------------

    async def StartWorker(self, request, context):
        await self._begin("StartWorker", request, context)
        ref = await self._model(request.model, context)
        await self._pool(request.pool_id, context)
        devices = await self._devices(request.device_ids, context)
        worker_id = f"w-{len(self.workers) + 1}"
        self.workers.add(worker_id)
        w = worker(worker_id, ref, common_pb2.WORKER_STATE_STARTING)
        w.ClearField("device_bytes")
        w.device_ids[:] = devices
        w.active_jobs = 0
        return admin_pb2.StartWorkerResponse(worker=w)

    async def StopWorker(self, request, context):
        await self._begin("StopWorker", request, context)
        if request.worker_id not in self.workers and not self.lenient:
            await OrchError("NOT_FOUND", f"no worker {request.worker_id!r}",
                            param="worker_id").abort(context)
        self.workers.discard(request.worker_id)
        return admin_pb2.StopWorkerResponse()

    async def DrainPool(self, request, context):
        await self._begin("DrainPool", request, context)
        await self._pool(request.pool_id, context)
        state = common_pb2.POOL_STATE_DRAINING if request.drain else \
            common_pb2.POOL_STATE_AVAILABLE
        return admin_pb2.DrainPoolResponse(pool=pool(state))

    # ---- the scheduling policy --------------------------------------------------------------

    def _active(self) -> admin_pb2.PolicyVersion:
        return next(v for v in self.versions if v.active)

    async def GetPolicy(self, request, context):
        await self._begin("GetPolicy", request, context)
        return admin_pb2.GetPolicyResponse(active=self._active(), editable=True)

    async def ListPolicyVersions(self, request, context):
        await self._begin("ListPolicyVersions", request, context)
        return admin_pb2.ListPolicyVersionsResponse(versions=self.versions)

    @staticmethod
    def _problems(source: str) -> list[admin_pb2.PolicyProblem]:
        return [admin_pb2.PolicyProblem(line=2, message="'=' expected near 'x'")] \
            if "syntax error" in source else []

    async def ValidatePolicy(self, request, context):
        await self._begin("ValidatePolicy", request, context)
        problems = self._problems(request.source)
        return admin_pb2.ValidatePolicyResponse(ok=not problems, problems=problems)

    async def DryRunPolicy(self, request, context):
        await self._begin("DryRunPolicy", request, context)
        dispatch = admin_pb2.Decision(action="dispatch", job_id="job-1", worker_id="w-1",
                                      pool_id=POOL, model_ref="file:/models/tiny",
                                      reason="free slot")
        problems = self._problems(request.source)
        return admin_pb2.DryRunPolicyResponse(
            policy_decisions=[] if problems else [dispatch], builtin_decisions=[dispatch],
            problems=problems, policy_ms=0.25, builtin_ms=0.05)

    async def ActivatePolicy(self, request, context):
        await self._begin("ActivatePolicy", request, context)
        if request.version:
            found = [v for v in self.versions if v.version == request.version]
            if not found and not self.lenient:
                await OrchError("NOT_FOUND", f"no policy version {request.version}",
                                param="version").abort(context)
            new = found[0] if found else policy_version(request.version)
        elif request.builtin:
            new = policy_version(len(self.versions) + 1, "builtin")
        else:
            if problems := self._problems(request.source):
                await OrchError("POLICY_INVALID", problems[0].message,
                                param="source").abort(context)
            new = policy_version(len(self.versions) + 1, "lua", request.source)
        for v in self.versions:
            v.active = False
        if new not in self.versions:
            self.versions.append(new)
        new.active = True
        return admin_pb2.ActivatePolicyResponse(active=new)
