"""The built-in scheduling policy: decide(snapshot) -> decisions. Pure and deterministic.

Inputs (all from the Snapshot): eligible heads per model, counts of queued / backoff
jobs, READY workers per model with their free slots (a worker runs up to `slots` jobs
at once), idle workers (READY, no job running; LRU), serving / starting counts and the
serving workers' slots, pools ranked by room, STOPPING workers' memory, start backoffs,
learned estimates (start_s, job_s), the optimizer's advice, pins.

Formula, per cycle:
  1. Dispatch. Models in the order of their head job (priority, admission order); each
     model's heads go, in order, into free slots of its READY workers (affinity: a job
     only ever goes to a worker already serving its model), one Dispatch per job: each
     to the worker running the fewest jobs, ties longest idle first, so every idle
     worker takes one before any worker takes a second, and no worker gets more than
     its free slots. A free slot costs nothing, a start costs start_s: jobs are left
     over for step 2 only when every free slot of the model is filled.
  2. Capacity, for each model still holding eligible jobs (remaining r), in the order of
     its first waiting job:
     - unservable (optimizer advice)             -> wait "no pool can serve this model"
     - no worker at all (serving + starting = 0):
         start backoff                           -> wait
         place (below) fits                      -> StartWorker, wait "worker starting"
         STOPPING workers will free enough       -> wait "evicting to make room"
         LRU eviction frees enough on one pool   -> StopWorker(s), wait "evicting ..."
         otherwise                               -> wait "no device has room" / "no pool"
     - workers serving (every slot now taken) or starting, with an estimate:
       expected_wait = r / lanes * job_s, where lanes = the serving workers' slots + 1
       per starting worker (its slots are known once it is ready). If expected_wait >
       start_s, not in start backoff, no start of the model already in flight, and a
       device that hosts no worker of the model fits WITHOUT eviction -> StartWorker
       (another one); otherwise wait "waiting is faster than starting" / "no free
       device". (A second replica on the same device adds no compute; one start in
       flight at a time lets each new worker's effect show before the next: extra
       workers grow one per start_s.)
       Without an estimate the model waits for its workers. A StartAdvice whose devices
       still host no worker and fit may start one either way (free capacity).
  3. Retry backoff: one wait per model with jobs whose not_before > now.
  Place: among available pools offering the engine, the mask of device_count devices
  with the most free memory (free = snapshot free - reservations made this cycle);
  room = min free over the mask; the pool with the largest room wins (ties: pool id),
  and room must be >= the model's memory estimate on EVERY device of the mask.
  Evict: walk idle workers (no job running) least recently used first, skipping pinned
  ones and ones claimed this cycle; stop the ones on the first pool whose devices then
  fit. A worker running any job is never evicted.
One Wait per (model, reason) per cycle. Cost O(models log models + decisions x log
(workers of the model) + pools touched). The eviction walk is O(idle workers), and runs
only when nothing fits and the snapshot's evictable bound says some pool could; a need
that found no victims rules out every larger one for the rest of the cycle.

Tenancy (platform mode, snapshot.tenancy; limits and reasons in orchestrator.quota).
Quotas hold jobs in the queue, never reject them; a worker runs one tenant's jobs at a
time. The heads already leave out tenants that may not have another job dispatched
(snapshot._tenant_heads). Step 1 becomes, for each head in order, with a per-cycle
ledger of each tenant's jobs in slots and VRAM held (quota.Ledger):
     - tenant over its concurrent-job quota or out of token budget -> held (quota)
     - a free slot on a worker already running the tenant's jobs (fewest jobs, then
       longest idle) -> Dispatch; it costs no VRAM
     - else the longest idle worker, if the tenant's VRAM ceiling allows memory_bytes x
       devices more -> Dispatch; the worker is the tenant's for the rest of the cycle
       (its other slots serve only the tenant), else held (VRAM ceiling)
     - else no slot it may use -> capacity
  Then per model and tenant with jobs left: held -> one Wait per (model, tenant) with
  the quota's reason ("tenant quota: 4 of 4 concurrent jobs", ...) for all its jobs of
  the model; the same when its VRAM ceiling could not hold one more worker of the model
  (memory estimate x devices). The other tenants' jobs wait for capacity together, as
  in step 2, with remaining r = the sum over them of min(jobs left, quota room): no
  worker is started or evicted for jobs a quota holds. Cost: as above, plus O(T) per
  model with eligible jobs (T = its tenants with eligible jobs) and O(open workers of the
  model running jobs) for a model whose heads include a tenant holding one of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.quota import Ledger, worker_bytes
from orchestrator.snapshot import (Decision, DeviceKey, Dispatch, JobView, Snapshot,
                                   StartWorker, StopWorker, Wait, WorkerView)


class Reason:
    """Reasons (stable strings: a Wait's reason becomes its jobs' waiting_reason)."""
    DISPATCH = "free slot on a worker with the model"
    STARTING = "worker starting"
    BUSY = "all workers for the model are busy or starting"
    WAIT_FASTER = "all workers busy; waiting is faster than starting"
    START_ANOTHER = "all workers busy; starting another worker"
    BUSY_NO_ROOM = "all workers busy; no free device for another"
    START_BACKOFF = "worker start failed recently; backing off"
    NO_ROOM = "no device has room for the model"
    NO_POOL = "no pool available"
    EVICTING = "evicting to make room"
    RETRY_BACKOFF = "retry backoff"
    UNSERVABLE = "no pool can serve this model"


@dataclass(frozen=True, slots=True)
class Placed:
    pool_id: str
    device_ids: tuple[str, ...]
    room: int  # min free bytes over the mask before this start


@dataclass(frozen=True, slots=True)
class Unplaced:
    reason: str  # Reason.NO_ROOM or Reason.NO_POOL


NO_ROOM, NO_POOL = Unplaced(Reason.NO_ROOM), Unplaced(Reason.NO_POOL)
_NOWHERE: frozenset[DeviceKey] = frozenset()


class _Cycle:
    """Scratch state of one decide() call: claims and reservations made so far."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.claimed: set[str] = set()  # workers dispatched to or stopped this cycle
        self.reserved: dict[DeviceKey, int] = {}
        self.touched: set[str] = set()  # pools whose precomputed room is stale
        self.no_victims: list[tuple[str, int, int]] = []  # (engine, k, mem) evict found none

    def fill(self, ws: tuple[WorkerView, ...], n: int) -> list[str]:
        """Worker ids for a model's next n jobs (n <= the free slots of `ws`, which are
        in the snapshot's dispatch order): each to the worker running the fewest jobs,
        ties longest idle first. Claims every worker it picks. (decide inlines the usual
        case, where the first n workers run equally many jobs: one each, in order.)"""
        heap = [(w.active, w.last_used, w.worker_id, w.free_slots) for w in ws]  # sorted
        picked = []
        for _ in range(n):
            active, last_used, wid, free = heap[0]
            picked.append(wid)
            if free > 1:
                heapq.heapreplace(heap, (active + 1, last_used, wid, free - 1))
            else:
                heapq.heappop(heap)
        self.claimed.update(picked)
        return picked

    def free(self, key: DeviceKey) -> int:
        return self.snap.devices[key].free_bytes - self.reserved.get(key, 0)

    def reserve(self, p: Placed, mem: int) -> None:
        for d in p.device_ids:
            key = (p.pool_id, d)
            self.reserved[key] = self.reserved.get(key, 0) + mem
        self.touched.add(p.pool_id)

    def room(self, pid: str, k: int, avoid: frozenset[DeviceKey]) -> tuple[int, tuple[str, ...]]:
        """(room, mask) of the pool's best k devices now, leaving out `avoid`; room -1
        when fewer than k devices are left."""
        ranked = sorted(((self.free((pid, d)), d) for d in self.snap.devices_by_free[pid]
                         if (pid, d) not in avoid), key=lambda r: (-r[0], r[1]))
        if len(ranked) < k:
            return -1, ()
        return ranked[k - 1][0], tuple(d for _, d in ranked[:k])


def decide(snap: Snapshot) -> list[Decision]:
    cyc = _Cycle(snap)
    out: list[Decision] = []
    if snap.tenancy:
        return _decide_tenants(cyc, out)
    append, claim = out.append, cyc.claimed.add
    queued, total, backoff = snap.queued, snap.queued_total, snap.waiting_backoff
    open_workers, free_slots = snap.open_workers, snap.free_slots
    waiting: list[tuple[int, int, str, JobView, int]] = []
    for m, heads in queued.items():  # in the order of each model's head job
        n = min(len(heads), free_slots.get(m, 0))
        if n:
            ws = open_workers[m]
            if n <= len(ws) and ws[n - 1].active == ws[0].active:  # one each, in order
                for i in range(n):
                    wid = ws[i].worker_id
                    append(Dispatch(heads[i].job_id, wid, Reason.DISPATCH))
                    claim(wid)
            else:
                for job, wid in zip(heads, cyc.fill(ws, n)):
                    append(Dispatch(job.job_id, wid, Reason.DISPATCH))
        remaining = total[m] - backoff.get(m, 0) - n
        if remaining > 0:
            first = heads[n] if n < len(heads) else heads[-1]
            waiting.append((first.priority, first.order, m, first, remaining))
    waiting.sort()
    for _, _, m, first, remaining in waiting:
        reason = _capacity(cyc, m, first, remaining, out)
        append(Wait(first.job_id, reason, m, remaining))
    for m, job in snap.next_retry.items():
        append(Wait(job.job_id, Reason.RETRY_BACKOFF, m, backoff[m], job.not_before))
    return out


def _decide_tenants(cyc: _Cycle, out: list[Decision]) -> list[Decision]:
    """decide() in platform mode: the same steps, with quotas and tenant-exclusive
    workers (module docstring, "Tenancy")."""
    snap = cyc.snap
    led = Ledger(snap.tenants, snap.tenant_running, snap.tenant_vram)
    append, claim = out.append, cyc.claimed.add
    sent: dict[tuple[str, str], int] = {}  # (model, tenant) -> jobs dispatched
    left: dict[tuple[str, str], JobView] = {}  # (model, tenant) -> first head not sent
    held: dict[tuple[str, str], str] = {}  # (model, tenant) -> why its heads were held
    for m, heads in snap.queued.items():  # in the order of each model's head job
        shared = snap.idle.get(m, ())  # idle workers, longest idle first: anyone's
        owned: dict[str, list[tuple[int, float, str, int]]] = {}  # tenant -> its workers
        holding = snap.owned_slots.get(m)
        if holding and any(j.tenant_id in holding for j in heads):
            # The open workers after the idle ones run jobs, each for one tenant; they
            # come in dispatch order, so each tenant's list is a heap already.
            for w in snap.open_workers[m][len(shared):]:
                if w.tenant_id in holding:
                    owned.setdefault(w.tenant_id, []).append(
                        (w.active, w.last_used, w.worker_id, w.free_slots))
        taken = 0  # shared workers taken so far
        for job in heads:
            t = job.tenant_id
            why = led.blocked(t)
            if not why:
                heap = owned.get(t)
                if heap:  # a worker it holds first: fewest jobs, then longest idle
                    active, last_used, wid, free = heap[0]
                    if free > 1:
                        heapq.heapreplace(heap, (active + 1, last_used, wid, free - 1))
                    else:
                        heapq.heappop(heap)
                    led.take(t)
                elif taken < len(shared):
                    w = shared[taken]
                    wid, need = w.worker_id, worker_bytes(w.memory_bytes, len(w.device_ids))
                    why = led.over_vram(t, need)
                    if not why:
                        taken += 1
                        led.take(t, need)
                        if w.slots > 1:
                            owned[t] = [(1, w.last_used, wid, w.slots - 1)]
                else:
                    wid = ""  # no slot it may use: capacity (step 2)
                if not why and wid:
                    append(Dispatch(job.job_id, wid, Reason.DISPATCH))
                    claim(wid)
                    sent[(m, t)] = sent.get((m, t), 0) + 1
                    continue
            left.setdefault((m, t), job)
            if why:
                held.setdefault((m, t), why)

    # Step 2 per model: its tenants' jobs left, either held by a quota (one Wait per
    # tenant) or waiting for capacity (one group per model, as without tenancy).
    waiting: list[tuple[int, int, str, JobView, int, int]] = []
    quota_waits: list[tuple[int, int, str, str, JobView, str, int]] = []
    for m, queues in snap.tenant_queues.items():
        first: JobView | None = None  # the first head left, else any tenant's first job
        runnable = jobs = 0
        for q in queues:
            t = q.tenant_id
            n = q.eligible - sent.get((m, t), 0)
            if n <= 0:
                continue
            # Its first job left: a head not sent, else (every head of the tenant went
            # out) its first job, which only names the Wait.
            job = left.get((m, t), q.first)
            why = led.blocked(t) or held.get((m, t), "") or led.over_vram(
                t, worker_bytes(job.memory_estimate, job.device_count))
            if why:
                quota_waits.append((job.priority, job.order, job.job_id, m, job, why, n))
                continue
            runnable += led.room(t, n)
            jobs += n
            if first is None or _before(job, first, (m, t) in left,
                                        (m, first.tenant_id) in left):
                first = job
        if first is not None:
            waiting.append((first.priority, first.order, m, first, runnable, jobs))
    waiting.sort()
    for _, _, m, first, runnable, jobs in waiting:
        reason = _capacity(cyc, m, first, runnable, out)
        append(Wait(first.job_id, reason, m, jobs))
    quota_waits.sort()
    for _, _, _, m, job, why, n in quota_waits:
        append(Wait(job.job_id, why, m, n))
    backoff = snap.waiting_backoff
    for m, job in snap.next_retry.items():
        append(Wait(job.job_id, Reason.RETRY_BACKOFF, m, backoff[m], job.not_before))
    return out


def _before(a: JobView, b: JobView, a_left: bool, b_left: bool) -> bool:
    """Does `a` name a model's capacity Wait before `b`: a head still queued first, then
    (priority, order)."""
    if a_left is not b_left:
        return a_left
    return (a.priority, a.order) < (b.priority, b.order)


def _capacity(cyc: _Cycle, m: str, job: JobView, remaining: int, out: list[Decision]) -> str:
    """Decide what (if anything) to start or stop for model m; append those decisions
    and return the reason its remaining jobs wait. Jobs remain only once step 1 filled
    every free slot of m: each of its serving workers is full now."""
    snap = cyc.snap
    if m in snap.unservable:
        return Reason.UNSERVABLE
    serving = snap.serving_by_model.get(m, 0)
    starting = snap.starting_by_model.get(m, 0)
    present = serving + starting
    lanes = snap.lanes_by_model.get(m, 0) + starting
    backoff = snap.start_backoff_until.get(m, 0.0) > snap.now
    advised = _advised(cyc, m, job) if not backoff and m in snap.start_advice else NO_ROOM
    if present == 0:
        if backoff:
            return Reason.START_BACKOFF
        if isinstance(advised, Placed):
            _start(cyc, job, advised, f"no worker for {m}; optimizer advice: idle devices "
                                      f"on {advised.pool_id}", out)
            return Reason.STARTING
        p = _place(cyc, job)
        if isinstance(p, Placed):
            _start(cyc, job, p, f"no worker for {m}; most free memory on {p.pool_id}", out)
            return Reason.STARTING
        if p is NO_POOL:
            return Reason.NO_POOL
        return _evict(cyc, m, job, out)
    est = snap.estimates.get(m)
    if est is None or remaining / lanes * est.job_s <= est.start_s:
        if isinstance(advised, Placed):
            _start(cyc, job, advised, f"optimizer advice: idle devices on {advised.pool_id}", out)
            return Reason.START_ANOTHER
        if not serving:
            return Reason.STARTING
        return Reason.BUSY if est is None else Reason.WAIT_FASTER
    if backoff:
        return Reason.START_BACKOFF
    if not isinstance(advised, Placed) and starting:
        return Reason.STARTING
    p = advised if isinstance(advised, Placed) else _place(
        cyc, job, snap.devices_of_model.get(m, _NOWHERE))
    if not isinstance(p, Placed):
        return Reason.BUSY_NO_ROOM
    slots = f" ({lanes} slots)" if lanes != present else ""
    _start(cyc, job, p, f"{remaining} queued for {present} workers{slots}: expected wait "
                        f"{remaining / lanes * est.job_s:.0f} s > start {est.start_s:.0f} s; "
                        f"most free memory on {p.pool_id}", out)
    return Reason.START_ANOTHER


def _start(cyc: _Cycle, job: JobView, p: Placed, why: str, out: list[Decision]) -> None:
    cyc.reserve(p, job.memory_estimate)
    out.append(StartWorker(job.model_ref, p.pool_id, p.device_ids, job.memory_estimate, why))


def _place(cyc: _Cycle, job: JobView, avoid: frozenset[DeviceKey] = _NOWHERE
           ) -> Placed | Unplaced:
    """Least-loaded placement without eviction (see the module docstring), on devices
    outside `avoid`."""
    snap, mem, k = cyc.snap, job.memory_estimate, job.device_count
    best: Placed | None = None
    for room, pid in snap.rooms(k):
        if room < mem or (best is not None and room < best.room):
            break  # ranked by room; reservations and avoided devices only lower it
        if job.engine not in snap.pools[pid].engines:
            continue
        cur, mask = room, snap.devices_by_free[pid][:k]
        if pid in cyc.touched or avoid and any((pid, d) in avoid for d in mask):
            cur, mask = cyc.room(pid, k, avoid)
            if cur < mem:
                continue
        if best is None or cur > best.room or (cur == best.room and pid < best.pool_id):
            best = Placed(pid, mask, cur)
    if best is not None:
        return best
    return NO_ROOM if snap.rooms(1) else NO_POOL  # rooms(1): every available pool


def _advised(cyc: _Cycle, m: str, job: JobView) -> Placed | Unplaced:
    """The first StartAdvice for m whose devices host no worker and still fit."""
    snap = cyc.snap
    for a in snap.start_advice[m]:
        pool = snap.pools.get(a.pool_id)
        if (pool is None or not pool.available or job.engine not in pool.engines
                or len(a.device_ids) != job.device_count):
            continue
        keys = [(a.pool_id, d) for d in a.device_ids]
        if any(k not in snap.devices or k in snap.occupied or k in cyc.reserved for k in keys):
            continue
        room = min(cyc.free(k) for k in keys)
        if room >= job.memory_estimate:
            return Placed(a.pool_id, a.device_ids, room)
    return NO_ROOM


def _evict(cyc: _Cycle, m: str, job: JobView, out: list[Decision]) -> str:
    """Make room for model m: wait for STOPPING workers if they free enough, else stop
    the least recently used idle, unpinned workers on the first pool that then fits."""
    snap, mem, k, engine = cyc.snap, job.memory_estimate, job.device_count, job.engine
    if any(e == engine and kk <= k and mm <= mem for e, kk, mm in cyc.no_victims):
        return Reason.NO_ROOM  # a smaller need found no victims this cycle
    hopeful = set()  # pools where stopping everything evictable could make room
    for room, pid in snap.evictable_rooms(k):
        if room < mem:
            break
        if _usable(cyc, pid, job):
            hopeful.add(pid)
    if not hopeful:
        cyc.no_victims.append((engine, k, mem))
        return Reason.NO_ROOM
    freeing = snap.freeing
    if freeing:
        for pid in sorted({pid for pid, _ in freeing} & hopeful):
            if _mask(cyc, pid, mem, k, freeing):
                return Reason.EVICTING
    avail: dict[DeviceKey, int] = {}  # free + freeing + freed by candidates so far
    fitting: dict[str, int] = {}  # hopeful pool -> devices with avail >= mem
    candidates: dict[str, list[WorkerView]] = {}
    for w in snap.idle_lru:
        pid = w.pool_id
        if pid not in hopeful:
            continue
        n = fitting.get(pid)
        if n is None:
            n = 0
            for d in snap.devices_by_free[pid]:
                key = (pid, d)
                a = avail[key] = cyc.free(key) + freeing.get(key, 0)
                n += a >= mem
        if w.worker_id in cyc.claimed or not w.memory_bytes or snap.is_pinned(w):
            fitting[pid] = n
            continue
        candidates.setdefault(pid, []).append(w)
        for d in w.device_ids:
            key = (pid, d)
            a = avail.get(key)
            if a is not None:
                avail[key] = a + w.memory_bytes
                n += a < mem <= a + w.memory_bytes
        fitting[pid] = n
        if n < k:
            continue
        mask = _mask(cyc, pid, mem, k, {key: a - cyc.free(key) for key, a in avail.items()
                                         if key[0] == pid})
        needy = {d for d in mask if cyc.free((pid, d)) + freeing.get((pid, d), 0) < mem}
        for v in candidates[pid]:
            if needy.intersection(v.device_ids):
                cyc.claimed.add(v.worker_id)
                out.append(StopWorker(v.worker_id, f"least recently used idle worker; "
                                                   f"making room for {m} on {pid}"))
        return Reason.EVICTING
    cyc.no_victims.append((engine, k, mem))
    return Reason.NO_ROOM


def _usable(cyc: _Cycle, pid: str, job: JobView) -> bool:
    """Could the pool ever hold the model: available, engine, k devices big enough."""
    pool = cyc.snap.pools.get(pid)
    if pool is None or not pool.available or job.engine not in pool.engines:
        return False
    return sum(d.total_bytes >= job.memory_estimate for d in pool.devices) >= job.device_count


def _mask(cyc: _Cycle, pid: str, mem: int, k: int,
          extra: Mapping[DeviceKey, int]) -> tuple[str, ...]:
    """The k devices with the most room counting `extra` bytes; () if they do not fit."""
    avail = sorted(((cyc.free((pid, d)) + extra.get((pid, d), 0), d)
                    for d in cyc.snap.devices_by_free[pid]), key=lambda r: (-r[0], r[1]))
    if len(avail) < k or avail[k - 1][0] < mem:
        return ()
    return tuple(d for _, d in avail[:k])


__all__ = ["decide", "Reason", "Placed", "Unplaced"]
