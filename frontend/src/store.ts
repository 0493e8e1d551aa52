// The UI's live state: one snapshot (GET /v2/cluster) at start, then every change from
// the fact stream (GET /v2/events). No polling: a fact that the state cannot be
// updated from alone (a pool never seen, a worker of an unknown pool) asks for one
// fresh snapshot, debounced.

import { markRaw, reactive, shallowRef } from 'vue'
import * as api from './api'
import type { ClusterSnapshot, Fact, Info, Job, ModelInfo, Pin, Pool, Worker } from './api'

export const FACT_RING = 5000
/** How many retained facts before the snapshot the feed shows at start. */
export const HISTORY = 500

export interface JobRow {
  id: string
  status: string
  model: string | null
  model_ref: string | null
  priority: string
  waiting_reason: string | null
  worker_id: string | null
  pool_id: string | null
  attempts: number
  created_at: string | null
  updated_at: string | null
  error_code: string | null
  message: string | null
}

export interface Download {
  pool_id: string
  model_ref: string
  phase: string
  bytes_done: number | null
  bytes_total: number | null
}

export interface ActionRecord {
  id: number
  label: string
  endpoint: string
  correlationId: string
  started: number
  status: 'pending' | 'waiting' | 'done' | 'no-fact' | 'error' | 'missing'
  error: string | null
  fact: Fact | null
  expect: (f: Fact) => boolean
}

export const state = reactive({
  info: null as Info | null,
  mode: null as string | null,
  snapshotLoaded: false,
  snapshotFactId: 0,
  snapshotError: null as string | null,
  pools: {} as Record<string, Pool>,
  models: [] as ModelInfo[],
  pins: [] as Pin[],
  jobs: {} as Record<string, JobRow>,
  downloads: {} as Record<string, Download>,
  stream: 'connecting' as api.StreamState,
  streamDetail: '' as string,
  lastFactId: 0,
  policyChanged: 0, // bumps on policy.changed facts
  actions: [] as ActionRecord[],
  errors: [] as { id: number; text: string }[],
})

/** The feed: raw facts, oldest first (shallow: facts never change once received). */
export const facts = shallowRef<Fact[]>([])

const listeners = new Set<(f: Fact[]) => void>()
export function onFacts(fn: (f: Fact[]) => void): () => void {
  listeners.add(fn)
  return () => listeners.delete(fn)
}

let errorSeq = 0
export function reportError(text: string): void {
  errorSeq += 1
  state.errors.push({ id: errorSeq, text })
  if (state.errors.length > 5) state.errors.shift()
}

export function dismissError(id: number): void {
  state.errors = state.errors.filter((e) => e.id !== id)
}

// ---- snapshot -------------------------------------------------------------------------

function jobRow(j: Job): JobRow {
  return {
    id: j.id, status: j.status, model: j.model, model_ref: j.model_ref, priority: j.priority,
    waiting_reason: j.waiting_reason, worker_id: j.worker_id, pool_id: j.pool_id,
    attempts: j.attempts, created_at: j.created_at, updated_at: j.updated_at,
    error_code: j.error?.code ?? null, message: j.error?.message ?? null,
  }
}

function applySnapshot(s: ClusterSnapshot): void {
  state.mode = s.mode ?? state.mode
  const pools: Record<string, Pool> = {}
  for (const p of s.pools ?? []) pools[p.pool_id] = p
  state.pools = pools
  state.models = s.models ?? []
  state.pins = s.pins ?? []
  for (const j of s.active_jobs ?? []) state.jobs[j.id] = jobRow(j)
  // Jobs the snapshot no longer lists as active have finished meanwhile; their final
  // facts may have been replayed already. Leave finished ones alone.
  const active = new Set((s.active_jobs ?? []).map((j) => j.id))
  for (const row of Object.values(state.jobs)) {
    if (!active.has(row.id) && ['queued', 'dispatched', 'running'].includes(row.status)) {
      row.status = 'unknown'
    }
  }
  state.snapshotFactId = s.fact_id ?? 0
  state.snapshotLoaded = true
  state.snapshotError = null
}

let refreshTimer: ReturnType<typeof setTimeout> | null = null

/** One fresh snapshot soon (several requests within 500 ms make one). */
export function refreshSoon(): void {
  if (refreshTimer !== null || api.availability.missing[api.ENDPOINTS.cluster]) return
  refreshTimer = setTimeout(() => {
    refreshTimer = null
    void loadSnapshot()
  }, 500)
}

export async function loadSnapshot(): Promise<boolean> {
  try {
    applySnapshot(await api.getCluster())
    return true
  } catch (exc) {
    const err = exc as api.ApiError
    state.snapshotError = err.message
    if (!err.missing) reportError(err.message)
    return false
  }
}

// ---- facts ----------------------------------------------------------------------------

function attr<T>(f: Fact, key: string): T | undefined {
  return (f.attributes ?? {})[key] as T | undefined
}

function findWorker(id: string | null): Worker | undefined {
  if (!id) return undefined
  for (const p of Object.values(state.pools)) {
    const w = p.workers.find((x) => x.worker_id === id)
    if (w) return w
  }
  return undefined
}

function ensureJob(f: Fact): JobRow | undefined {
  if (!f.job_id) return undefined
  let row = state.jobs[f.job_id]
  if (!row) {
    row = {
      id: f.job_id, status: 'queued', model: null, model_ref: f.model_ref, priority: 'interactive',
      waiting_reason: null, worker_id: null, pool_id: null, attempts: 0, created_at: f.time,
      updated_at: f.time, error_code: null, message: null,
    }
    state.jobs[f.job_id] = row
    row = state.jobs[f.job_id]
  }
  row.updated_at = f.time
  if (f.model_ref) row.model_ref = f.model_ref
  return row
}

function residency(poolId: string, modelRef: string) {
  const pool = state.pools[poolId]
  if (!pool) return undefined
  pool.models ??= []
  let r = pool.models.find((m) => m.model_ref === modelRef)
  if (!r) {
    pool.models.push({ model_ref: modelRef, cached: false, preloaded: false, size_bytes: 0, last_used_at: null })
    r = pool.models[pool.models.length - 1]
  }
  return r
}

/** Apply one fact to the state. Facts at or before the snapshot's fact_id are in it. */
export function applyFact(f: Fact): void {
  const code = f.code
  const pool = f.pool_id ? state.pools[f.pool_id] : undefined
  switch (code) {
    case 'job.admitted': {
      const row = ensureJob(f)
      if (row) {
        row.status = 'queued'
        row.priority = attr<string>(f, 'priority') ?? row.priority
        row.created_at = f.time
      }
      break
    }
    case 'job.waiting': {
      const row = ensureJob(f)
      if (row) row.waiting_reason = f.message || null
      break
    }
    case 'job.dispatched': {
      const row = ensureJob(f)
      if (row) {
        row.status = 'dispatched'
        row.worker_id = f.worker_id
        row.pool_id = f.pool_id
        row.waiting_reason = null
        row.attempts = attr<number>(f, 'attempt') ?? row.attempts
      }
      const w = findWorker(f.worker_id)
      const running = attr<number>(f, 'running')
      if (w && running !== undefined) {
        w.active_jobs = running
        if (w.state === 'ready' && running >= (w.slots || 1)) w.state = 'busy'
      }
      break
    }
    case 'job.started': {
      const row = ensureJob(f)
      if (row) row.status = 'running'
      break
    }
    case 'job.finished':
    case 'job.failed':
    case 'job.cancelled': {
      const row = ensureJob(f)
      if (row) {
        row.status = code === 'job.finished' ? 'succeeded' : code === 'job.failed' ? 'failed' : 'cancelled'
        row.error_code = attr<string>(f, 'error_code') ?? null
        row.message = f.message || null
        row.waiting_reason = null
      }
      const w = findWorker(f.worker_id)
      if (w && w.active_jobs > 0) {
        w.active_jobs -= 1
        if (w.state === 'busy') w.state = 'ready'
      }
      break
    }
    case 'job.retrying': {
      const row = ensureJob(f)
      if (row) {
        row.status = 'queued'
        row.waiting_reason = 'retry backoff'
        row.attempts = (attr<number>(f, 'attempt') ?? row.attempts + 1) - 1
      }
      break
    }
    case 'worker.starting':
    case 'worker.ready': {
      if (!pool || !f.worker_id) {
        refreshSoon()
        break
      }
      let w = pool.workers.find((x) => x.worker_id === f.worker_id)
      if (!w) {
        pool.workers.push({
          worker_id: f.worker_id, pool_id: pool.pool_id, model_ref: f.model_ref ?? '', engine: '',
          device_ids: attr<string[]>(f, 'device_ids') ?? [], state: 'starting', endpoint: null,
          device_bytes: {}, pid: 0, started_at: f.time, active_jobs: 0, slots: 0,
          engine_version: null, model_digest: null, last_used_at: null,
        })
        w = pool.workers[pool.workers.length - 1]
        if (!w.device_ids.length) refreshSoon()
      }
      if (code === 'worker.ready') {
        w.state = 'ready'
        const bytes = attr<Record<string, number>>(f, 'device_bytes')
        if (bytes) {
          w.device_bytes = bytes
          if (!w.device_ids.length) w.device_ids = Object.keys(bytes)
        }
        w.slots = attr<number>(f, 'slots') ?? w.slots
        w.pid = attr<number>(f, 'pid') ?? w.pid
        w.endpoint = attr<string>(f, 'endpoint') ?? w.endpoint
        w.engine = attr<string>(f, 'engine') ?? w.engine
        w.engine_version = attr<string>(f, 'engine_version') ?? w.engine_version
        // Device memory changed: the heartbeat (or a snapshot) brings exact numbers.
        refreshSoon()
      }
      break
    }
    case 'worker.stopped':
    case 'worker.failed': {
      if (pool) pool.workers = pool.workers.filter((w) => w.worker_id !== f.worker_id)
      refreshSoon()
      break
    }
    case 'pool.joined': {
      if (pool) pool.state = 'available'
      refreshSoon()
      break
    }
    case 'pool.lost': {
      if (pool) {
        pool.state = 'unavailable'
        pool.workers = []
      }
      break
    }
    case 'pool.draining': {
      if (pool) pool.state = attr<boolean>(f, 'draining') === false ? 'available' : 'draining'
      break
    }
    case 'pool.heartbeat': {
      // Proposed (docs/UI.md): attributes.devices = [{id, memory_used_bytes,
      // memory_free_bytes, memory_total_bytes?, utilization_percent, temperature_c}]
      const devices = attr<Partial<api.Device>[]>(f, 'devices')
      if (pool && Array.isArray(devices)) {
        for (const d of devices) {
          const mine = pool.inventory.devices.find((x) => x.id === d.id)
          if (mine) Object.assign(mine, d)
        }
        pool.last_heartbeat = f.time
      }
      const ram = attr<number>(f, 'ram_available_bytes')
      if (pool && typeof ram === 'number') pool.inventory.ram_available_bytes = ram
      break
    }
    case 'model.downloading':
    case 'model.cached':
    case 'model.preloaded':
    case 'model.evicted': {
      if (!f.pool_id || !f.model_ref) break
      const key = `${f.pool_id}|${f.model_ref}`
      if (code === 'model.downloading') {
        state.downloads[key] = {
          pool_id: f.pool_id, model_ref: f.model_ref, phase: attr<string>(f, 'phase') ?? 'downloading',
          bytes_done: attr<number>(f, 'bytes_done') ?? null, bytes_total: attr<number>(f, 'bytes_total') ?? null,
        }
        break
      }
      delete state.downloads[key]
      const r = residency(f.pool_id, f.model_ref)
      if (!r) {
        refreshSoon()
        break
      }
      if (code === 'model.cached') r.cached = true
      if (code === 'model.preloaded') {
        r.cached = true
        r.preloaded = true
      }
      if (code === 'model.evicted') {
        r.preloaded = false
        if (attr<boolean>(f, 'from_disk')) r.cached = false
      }
      break
    }
    case 'model.pinned': {
      if (!f.model_ref || !f.pool_id) break
      const devices = attr<string[]>(f, 'device_ids') ?? []
      state.pins = [
        ...state.pins.filter((p) => !(p.model_ref === f.model_ref && p.pool_id === f.pool_id)),
        { model_ref: f.model_ref, pool_id: f.pool_id, device_ids: devices, created_at: f.time },
      ]
      break
    }
    case 'model.unpinned': {
      if (!f.model_ref) break
      const gone = new Set(attr<string[]>(f, 'device_ids') ?? [])
      state.pins = state.pins
        .map((p) => (p.model_ref === f.model_ref && (!f.pool_id || p.pool_id === f.pool_id)
          ? { ...p, device_ids: gone.size ? p.device_ids.filter((d) => !gone.has(d)) : [] }
          : p))
        .filter((p) => p.device_ids.length > 0)
      break
    }
    case 'policy.changed':
      state.policyChanged += 1
      break
    default:
      break
  }
}

function receive(batch: Fact[]): void {
  const fresh = batch.map((f) => markRaw(f))
  const all = facts.value.concat(fresh)
  facts.value = all.length > FACT_RING ? all.slice(all.length - FACT_RING) : all
  for (const f of fresh) {
    state.lastFactId = Math.max(state.lastFactId, f.id)
    if (f.id > state.snapshotFactId) applyFact(f)
    for (const a of state.actions) {
      if (a.status === 'waiting' || a.status === 'pending') {
        if ((f.correlation_id && f.correlation_id === a.correlationId) || a.expect(f)) {
          a.fact = f
          a.status = 'done'
        }
      }
    }
  }
  for (const fn of listeners) fn(fresh)
}

// ---- start ----------------------------------------------------------------------------

let watch: api.FactWatch | null = null

export async function start(): Promise<void> {
  api.getInfo().then((info) => {
    state.info = info
    state.mode = info.mode
  }).catch((exc: api.ApiError) => {
    if (!exc.missing) reportError(exc.message)
  })
  const haveSnapshot = await loadSnapshot()
  // With a snapshot, the feed starts a little before it (history for the eye) and
  // only facts after its fact_id change the state. Without one, every retained
  // fact is replayed and applied: the best the UI can do.
  const after = haveSnapshot ? Math.max(0, state.snapshotFactId - HISTORY) : 0
  watch = api.watchFacts({
    after,
    onFacts: receive,
    onState: (s, detail) => {
      state.stream = s
      state.streamDetail = detail ?? ''
    },
    onReset: () => {
      facts.value = []
      state.snapshotFactId = 0
      void loadSnapshot()
    },
    onReconnect: () => refreshSoon(),
  })
}

export function stop(): void {
  watch?.close()
  watch = null
}

// ---- operator actions -------------------------------------------------------------------

let actionSeq = 0

/**
 * Run one operator action: its HTTP call, then wait for the fact that shows it took
 * effect (same correlation id, or `expect`). The activity panel shows each one.
 */
export async function runAction<T>(label: string, endpoint: string,
  doCall: (correlationId: string) => Promise<T>, expect: (f: Fact) => boolean,
  timeoutMs = 20000): Promise<T | undefined> {
  actionSeq += 1
  const correlationId = api.newCorrelationId()
  state.actions.unshift({
    id: actionSeq, label, endpoint, correlationId, started: Date.now(), status: 'pending',
    error: null, fact: null, expect,
  })
  if (state.actions.length > 12) state.actions.pop()
  const rec = state.actions[0]
  try {
    const result = await doCall(correlationId)
    if (rec.status === 'pending') {
      rec.status = 'waiting'
      // The fact may have arrived before the HTTP answer: look back a little.
      const recent = facts.value.slice(-200)
      const seen = recent.find((f) => f.correlation_id === correlationId || (
        f.time !== null && Date.parse(f.time) >= rec.started - 2000 && expect(f)))
      if (seen) {
        rec.fact = seen
        rec.status = 'done'
      } else {
        setTimeout(() => {
          if (rec.status === 'waiting') rec.status = 'no-fact'
        }, timeoutMs)
      }
    }
    return result
  } catch (exc) {
    const err = exc as api.ApiError
    rec.status = err.missing ? 'missing' : 'error'
    rec.error = err.message ?? String(exc)
    return undefined
  }
}

// ---- derived helpers --------------------------------------------------------------------

export function modelName(ref: string | null | undefined): string {
  if (!ref) return '—'
  const m = state.models.find((x) => x.ref === ref || x.id === ref)
  return m ? m.id : ref
}

export function allDevices(): { pool: Pool; device: api.Device }[] {
  const out: { pool: Pool; device: api.Device }[] = []
  for (const pool of Object.values(state.pools)) {
    for (const device of pool.inventory?.devices ?? []) out.push({ pool, device })
  }
  return out
}
