// The UI's whole HTTP contract with the gateway, in one place (docs/UI.md describes it).
//
// Every request the UI makes goes through this module. Endpoints are named by
// "METHOD /path-template" (ENDPOINTS): that name is what the error banner shows when
// the gateway does not serve one yet.
//
// JSON conventions are the gateway's /v2 ones (gateway/v2/objects.py): proto field
// names, enums as lower-case names without their prefix ("ready", "batch"),
// timestamps as ISO 8601 strings or null, empty ids as null, errors as OpenAI's
// `{"error": {message, type, param, code}}`.

import { reactive } from 'vue'

// ---- endpoints ----------------------------------------------------------------------

export const ENDPOINTS = {
  // existing gateway routes
  models: 'GET /v1/models',
  chat: 'POST /v1/chat/completions',
  task: 'GET /v2/tasks/{id}',
  cancelTask: 'DELETE /v2/tasks/{id}',
  taskEvents: 'GET /v2/tasks/{id}/events',
  facts: 'GET /v2/events',
  // added for the UI (docs/UI.md, "New endpoints")
  info: 'GET /v2/info',
  cluster: 'GET /v2/cluster',
  tasks: 'GET /v2/tasks',
  pin: 'POST /v2/admin/pins',
  unpin: 'DELETE /v2/admin/pins/{model}',
  preload: 'POST /v2/admin/models/{model}:preload',
  evict: 'POST /v2/admin/models/{model}:evict',
  startWorker: 'POST /v2/admin/workers',
  stopWorker: 'DELETE /v2/admin/workers/{id}',
  drain: 'POST /v2/admin/pools/{id}:drain',
  policy: 'GET /v2/admin/policy',
  policyVersions: 'GET /v2/admin/policy/versions',
  validatePolicy: 'POST /v2/admin/policy:validate',
  dryRunPolicy: 'POST /v2/admin/policy:dry-run',
  activatePolicy: 'POST /v2/admin/policy:activate',
} as const

export type EndpointKey = keyof typeof ENDPOINTS

// ---- JSON shapes ----------------------------------------------------------------------

export type Mode = 'home' | 'lab' | 'platform'

export interface ErrorObject {
  message: string
  type?: string
  param?: string | null
  code: string
}

export interface Fact {
  id: number
  time: string | null
  kind: string // "worker_failed"
  code: string // "worker.failed"
  level: string // "debug" | "info" | "warning" | "error"
  component: string
  correlation_id: string | null
  message: string
  job_id: string | null
  pool_id: string | null
  worker_id: string | null
  model_ref: string | null
  attributes: Record<string, unknown>
}

export interface Device {
  id: string
  index: number
  kind: string // "gpu" | "cpu" | "simulated"
  name: string
  memory_total_bytes: number
  memory_used_bytes: number
  memory_free_bytes: number
  utilization_percent: number
  temperature_c: number
}

export interface Inventory {
  devices: Device[]
  nvml_status: string
  hostname: string
  cpu_count: number
  ram_total_bytes: number
  ram_available_bytes: number
  engines: string[]
  driver_version: string
}

export type WorkerState =
  'starting' | 'ready' | 'busy' | 'draining' | 'stopping' | 'stopped' | 'failed'

export interface Worker {
  worker_id: string
  pool_id: string
  model_ref: string
  engine: string
  device_ids: string[]
  state: WorkerState | string
  endpoint: string | null
  device_bytes: Record<string, number>
  pid: number
  started_at: string | null
  active_jobs: number
  slots: number
  engine_version: string | null
  model_digest: string | null
  last_used_at: string | null
}

export interface ModelResidency {
  model_ref: string
  cached: boolean
  preloaded: boolean
  size_bytes: number
  last_used_at: string | null
}

export interface Pool {
  pool_id: string
  state: 'joining' | 'available' | 'draining' | 'unavailable' | string
  inventory: Inventory
  workers: Worker[]
  last_heartbeat: string | null
  address: string | null
  models: ModelResidency[]
  version: string | null
  provider_id: string | null
}

export interface ModelInfo {
  id: string
  ref: string
  aliases: string[]
  context_length: number
  engine: string
  created: number
  owned_by: string
  size_bytes: number
  memory_estimate_bytes: number
  device_count: number
  pinned_device_ids: string[]
  supports_logprobs: boolean
  supports_penalties: boolean
}

export interface Pin {
  model_ref: string
  pool_id: string
  device_ids: string[]
  created_at: string | null
}

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

export type JobStatus = 'queued' | 'dispatched' | 'running' | 'succeeded' | 'failed' | 'cancelled'

export interface Job {
  id: string
  status: JobStatus | string
  model: string
  model_ref: string | null
  priority: 'interactive' | 'batch' | string
  seed: number
  attempts: number
  created: number
  created_at: string | null
  updated_at: string | null
  started_at: string | null
  finished_at: string | null
  waiting_reason: string | null
  worker_id: string | null
  pool_id: string | null
  finish_reason: string | null
  usage: Usage | null
  error: ErrorObject | null
  output: string | null
  proof: Record<string, unknown> | null
  last_seq: number
  correlation_id: string | null
  events_url: string
}

export interface QueueDepth {
  priority: string
  depth: number
}

export interface ClusterSnapshot {
  // The id of the last fact published before the snapshot was taken: the fact stream
  // resumes after it, so no change is missed or applied twice.
  fact_id: number
  time: string | null
  mode: Mode | string
  pools: Pool[]
  queue: QueueDepth[]
  models: ModelInfo[]
  pins: Pin[]
  active_jobs: Job[]
}

export interface Info {
  mode: Mode | string
  version: string
  policy_editable: boolean
}

export interface PolicyVersion {
  version: number
  language: 'builtin' | 'lua' | string
  source: string
  created_at: string | null
  author: string | null
  active: boolean
}

export interface PolicyState {
  active: PolicyVersion
  editable: boolean
  mode: Mode | string
}

export interface PolicyProblem {
  line: number
  message: string
}

export interface Decision {
  action: string // dispatch | start_worker | stop_worker | preload | evict_model | wait
  job_id: string | null
  worker_id: string | null
  pool_id: string | null
  model_ref: string | null
  device_ids: string[]
  reason: string | null
  rejected: string | null
}

export interface ValidateResult {
  ok: boolean
  problems: PolicyProblem[]
}

export interface DryRunResult {
  policy_decisions: Decision[]
  builtin_decisions: Decision[]
  problems: PolicyProblem[]
  policy_ms: number
  builtin_ms: number
}

export interface OpenAIModel {
  id: string
  object: string
  created: number
  owned_by: string
}

export interface JobEvent {
  id: number | null // the SSE id (= seq)
  kind: string // queued | dispatched | started | tokens | metrics | divergence | retrying | end | error
  data: Record<string, unknown>
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

export interface ChatRequest {
  model: string
  messages: ChatMessage[]
  temperature?: number
  max_tokens?: number
  seed?: number
}

export interface ChatChunk {
  id: string
  model: string
  choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[]
  usage?: Usage | null
  system_fingerprint?: string
}

// ---- errors and endpoint availability ---------------------------------------------------

export class ApiError extends Error {
  constructor(
    readonly endpoint: string,
    readonly status: number, // 0: no HTTP answer (network)
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    // True when the gateway does not serve this endpoint (yet): see isMissing.
    readonly missing = false,
  ) {
    super(message)
  }
}

/** What the UI knows about endpoint availability: shown as banners. */
export const availability = reactive({
  // endpoint name -> short explanation, for every endpoint found missing
  missing: {} as Record<string, string>,
})

function markMissing(endpoint: string, why: string): void {
  if (!availability.missing[endpoint]) availability.missing[endpoint] = why
}

function markPresent(endpoint: string): void {
  if (availability.missing[endpoint]) delete availability.missing[endpoint]
}

/**
 * Is this answer "the gateway has no such route" rather than "no such object"?
 *  - 405 (the path exists with other methods), 501 (a plain static server),
 *  - 404 whose body is not the gateway's error JSON (e.g. a static file server),
 *  - 404 from the gateway for an unmatched route: code not_found, no param, and
 *    Starlette's message "Not Found". A missing object (no such job, worker, model)
 *    always has a specific message and usually a param.
 */
export function isMissing(status: number, body: unknown): boolean {
  if (status === 405 || status === 501) return true
  if (status !== 404) return false
  const err = (body as { error?: ErrorObject } | null)?.error
  if (!err || typeof err !== 'object') return true
  return err.code === 'not_found' && !err.param && err.message === 'Not Found'
}

// ---- plumbing -----------------------------------------------------------------------------

/** Where the API lives: the path before "/ui/" (the gateway may sit under a prefix). */
export function apiRoot(): string {
  const path = window.location.pathname
  const at = path.indexOf('/ui/')
  return at > 0 ? path.slice(0, at) : path.endsWith('/ui') ? path.slice(0, -3) : ''
}

const KEY_STORAGE = 'llama-orch.api-key'

export function apiKey(): string {
  try {
    return window.localStorage.getItem(KEY_STORAGE) ?? ''
  } catch {
    return ''
  }
}

export function setApiKey(key: string): void {
  try {
    if (key) window.localStorage.setItem(KEY_STORAGE, key)
    else window.localStorage.removeItem(KEY_STORAGE)
  } catch {
    /* storage disabled: the key lives for this page only */
  }
  sessionKey = key
}

let sessionKey: string | null = null

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const h: Record<string, string> = { Accept: 'application/json', ...extra }
  const key = sessionKey ?? apiKey()
  if (key) h.Authorization = `Bearer ${key}`
  return h
}

let correlationCounter = 0

/** A correlation id per UI request: the gateway passes it to the orchestrator, and
 * facts caused by the request may carry it (docs/UI.md). */
export function newCorrelationId(): string {
  correlationCounter += 1
  const rand = Math.random().toString(36).slice(2, 10)
  return `ui-${Date.now().toString(36)}-${rand}-${correlationCounter}`
}

async function errorFrom(endpoint: string, res: Response): Promise<ApiError> {
  let body: unknown = null
  const text = await res.text().catch(() => '')
  try {
    body = text ? JSON.parse(text) : null
  } catch {
    body = null
  }
  const err = (body as { error?: ErrorObject } | null)?.error
  const missing = isMissing(res.status, body)
  if (missing) markMissing(endpoint, `HTTP ${res.status}`)
  const message = missing
    ? `${endpoint} is not available on this gateway (HTTP ${res.status})`
    : err?.message ?? `${endpoint}: HTTP ${res.status}`
  return new ApiError(endpoint, res.status, err?.code ?? (missing ? 'missing_endpoint' : `http_${res.status}`),
    message, err?.param ?? null, missing)
}

function networkError(endpoint: string, exc: unknown): ApiError {
  if (exc instanceof DOMException && exc.name === 'AbortError') {
    return new ApiError(endpoint, 0, 'aborted', 'aborted')
  }
  return new ApiError(endpoint, 0, 'network', `${endpoint}: the gateway cannot be reached (${String(exc)})`)
}

interface CallOptions {
  body?: unknown
  query?: Record<string, string | number | boolean | undefined | null | string[]>
  signal?: AbortSignal
  correlationId?: string
}

function url(path: string, query?: CallOptions['query']): string {
  const u = new URL(apiRoot() + path, window.location.origin)
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v === undefined || v === null || v === '') continue
    if (Array.isArray(v)) v.forEach((x) => u.searchParams.append(k, x))
    else u.searchParams.set(k, String(v))
  }
  return u.pathname + u.search
}

async function call<T>(key: EndpointKey, path: string, opts: CallOptions = {}): Promise<T> {
  const endpoint = ENDPOINTS[key]
  const method = endpoint.split(' ')[0]
  const extra: Record<string, string> = {}
  if (opts.body !== undefined) extra['Content-Type'] = 'application/json'
  if (opts.correlationId) extra['X-Correlation-Id'] = opts.correlationId
  let res: Response
  try {
    res = await fetch(url(path, opts.query), {
      method,
      headers: headers(extra),
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.signal,
    })
  } catch (exc) {
    throw networkError(endpoint, exc)
  }
  if (!res.ok) throw await errorFrom(endpoint, res)
  markPresent(endpoint)
  const text = await res.text()
  if (!text) return {} as T
  try {
    return JSON.parse(text) as T
  } catch {
    // A 200 that is not JSON: a static server's fallback page, not the API.
    markMissing(endpoint, 'not JSON')
    throw new ApiError(endpoint, res.status, 'missing_endpoint',
      `${endpoint} is not available on this gateway (the answer is not JSON)`, null, true)
  }
}

const enc = encodeURIComponent

// ---- reads ----------------------------------------------------------------------------------

export const getInfo = (signal?: AbortSignal) => call<Info>('info', '/v2/info', { signal })

export const getCluster = (signal?: AbortSignal) =>
  call<ClusterSnapshot>('cluster', '/v2/cluster', { signal })

export const listModels = (signal?: AbortSignal) =>
  call<{ object: string; data: OpenAIModel[] }>('models', '/v1/models', { signal })

export const getTask = (id: string, signal?: AbortSignal) =>
  call<Job>('task', `/v2/tasks/${enc(id)}`, { signal })

export const listTasks = (status: string[] = [], pageSize = 100, signal?: AbortSignal) =>
  call<{ data: Job[]; next_page_token: string | null }>('tasks', '/v2/tasks',
    { query: { status, page_size: pageSize }, signal })

export const getPolicy = () => call<PolicyState>('policy', '/v2/admin/policy')

export const listPolicyVersions = () =>
  call<{ versions: PolicyVersion[] }>('policyVersions', '/v2/admin/policy/versions')

// ---- operator actions (each answers at once; the change itself arrives as a fact) ---------

export const cancelTask = (id: string, correlationId?: string) =>
  call<Job>('cancelTask', `/v2/tasks/${enc(id)}`, { correlationId })

export const pinModel = (model: string, poolId: string, deviceIds: string[], correlationId?: string) =>
  call<{ pin: Pin }>('pin', '/v2/admin/pins',
    { body: { model, pool_id: poolId, device_ids: deviceIds }, correlationId })

export const unpinModel = (model: string, poolId: string | null, correlationId?: string) =>
  call<object>('unpin', `/v2/admin/pins/${enc(model)}`, { query: { pool_id: poolId }, correlationId })

export const preloadModel = (model: string, poolId: string | null, correlationId?: string) =>
  call<object>('preload', `/v2/admin/models/${enc(model)}:preload`,
    { body: { pool_id: poolId ?? '' }, correlationId })

export const evictModel = (model: string, poolId: string | null, fromDisk: boolean, correlationId?: string) =>
  call<object>('evict', `/v2/admin/models/${enc(model)}:evict`,
    { body: { pool_id: poolId ?? '', from_disk: fromDisk }, correlationId })

export interface StartWorkerBody {
  model: string
  pool_id?: string
  device_ids?: string[]
  engine?: string
  engine_options?: Record<string, string>
}

export const startWorker = (body: StartWorkerBody, correlationId?: string) =>
  call<{ worker: Worker }>('startWorker', '/v2/admin/workers', { body, correlationId })

export const stopWorker = (workerId: string, force: boolean, correlationId?: string) =>
  call<object>('stopWorker', `/v2/admin/workers/${enc(workerId)}`,
    { query: { force: force ? 'true' : undefined }, correlationId })

export const drainPool = (poolId: string, drain: boolean, correlationId?: string) =>
  call<{ pool: Pool }>('drain', `/v2/admin/pools/${enc(poolId)}:drain`,
    { body: { drain }, correlationId })

export const validatePolicy = (source: string) =>
  call<ValidateResult>('validatePolicy', '/v2/admin/policy:validate', { body: { source } })

export const dryRunPolicy = (source: string) =>
  call<DryRunResult>('dryRunPolicy', '/v2/admin/policy:dry-run', { body: { source } })

export type ActivateBody = { source: string } | { version: number } | { builtin: true }

export const activatePolicy = (body: ActivateBody, correlationId?: string) =>
  call<{ active: PolicyVersion }>('activatePolicy', '/v2/admin/policy:activate', { body, correlationId })

// ---- server-sent events -----------------------------------------------------------------------

export interface SseMessage {
  id: string | null
  event: string
  data: string
}

/** Parse a text/event-stream body (WHATWG rules: fields, comments, multi-line data). */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  let id: string | null = null
  let event = ''
  let data: string[] = []
  try {
    for (;;) {
      const { value, done } = await reader.read()
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true })
      const lines = buffer.split(/\r\n|\r|\n/)
      // The last piece may be an incomplete line (or a lone \r before its \n).
      buffer = done ? '' : lines.pop() ?? ''
      for (const line of lines) {
        if (line === '') {
          if (data.length) yield { id, event: event || 'message', data: data.join('\n') }
          event = ''
          data = []
          continue
        }
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        let value = colon < 0 ? '' : line.slice(colon + 1)
        if (value.startsWith(' ')) value = value.slice(1)
        if (field === 'data') data.push(value)
        else if (field === 'event') event = value
        else if (field === 'id' && !value.includes('\0')) id = value
      }
      if (done) break
    }
  } finally {
    reader.releaseLock()
  }
}

async function openStream(key: EndpointKey, path: string, opts: CallOptions & { lastEventId?: string }):
Promise<ReadableStream<Uint8Array>> {
  const endpoint = ENDPOINTS[key]
  const extra: Record<string, string> = { Accept: 'text/event-stream' }
  if (opts.lastEventId) extra['Last-Event-ID'] = opts.lastEventId
  let res: Response
  try {
    res = await fetch(url(path, opts.query), {
      method: endpoint.split(' ')[0],
      headers: headers(opts.body === undefined ? extra : { ...extra, 'Content-Type': 'application/json' }),
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.signal,
      cache: 'no-store',
    })
  } catch (exc) {
    throw networkError(endpoint, exc)
  }
  if (!res.ok) throw await errorFrom(endpoint, res)
  const type = res.headers.get('content-type') ?? ''
  if (!type.startsWith('text/event-stream') || !res.body) {
    await res.body?.cancel()
    markMissing(endpoint, 'not an event stream')
    throw new ApiError(endpoint, res.status, 'missing_endpoint',
      `${endpoint} is not available on this gateway (not an event stream)`, null, true)
  }
  markPresent(endpoint)
  return res.body
}

export type StreamState = 'connecting' | 'live' | 'retrying' | 'missing' | 'closed'

export interface FactWatch {
  close(): void
}

/**
 * Follow the fact stream (GET /v2/events) from `after`, reconnecting with
 * Last-Event-ID after a drop (1 s, doubling to 30 s). Not a poll: one long-lived
 * request, renewed only when it ends. A missing endpoint stops it (onState "missing").
 * A resume position the server refuses (400 on Last-Event-ID, e.g. the orchestrator
 * restarted and its fact ids began again) calls onReset and restarts from 0.
 */
export function watchFacts(opts: {
  after: number
  onFacts: (facts: Fact[]) => void
  onState: (state: StreamState, detail?: string) => void
  onReset: () => void
  onReconnect?: () => void
}): FactWatch {
  const control = new AbortController()
  let last = opts.after
  let closed = false
  let delay = 1000
  let connectedBefore = false

  const run = async () => {
    while (!closed) {
      opts.onState(connectedBefore ? 'retrying' : 'connecting')
      try {
        const body = await openStream('facts', '/v2/events', {
          signal: control.signal,
          lastEventId: last > 0 ? String(last) : undefined,
        })
        if (connectedBefore) opts.onReconnect?.()
        connectedBefore = true
        opts.onState('live')
        delay = 1000
        let batch: Fact[] = []
        let flushTimer: ReturnType<typeof setTimeout> | null = null
        const flush = () => {
          flushTimer = null
          if (batch.length) {
            const out = batch
            batch = []
            opts.onFacts(out)
          }
        }
        for await (const msg of readSse(body)) {
          if (msg.event === 'error' && msg.id === null) {
            // The gateway's in-stream failure: reconnect from the last fact.
            break
          }
          let fact: Fact
          try {
            fact = JSON.parse(msg.data) as Fact
          } catch {
            continue
          }
          if (typeof fact.id === 'number') last = Math.max(last, fact.id)
          batch.push(fact)
          // Coalesce bursts (a replay can be thousands of facts) into one update.
          if (flushTimer === null) flushTimer = setTimeout(flush, 40)
        }
        if (flushTimer !== null) clearTimeout(flushTimer)
        flush()
      } catch (exc) {
        if (closed) return
        const err = exc as ApiError
        if (err.missing) {
          opts.onState('missing', err.message)
          return
        }
        if (err.status === 400 && err.param && /last-event-id|after/i.test(err.param)) {
          last = 0
          opts.onReset()
          continue
        }
        // Network, 5xx, 401/403: say why, and try again later.
        opts.onState('retrying', err?.message ?? String(exc))
        if (closed) return
        await new Promise((r) => setTimeout(r, delay))
        delay = Math.min(delay * 2, 30000)
        continue
      }
      // The stream ended (the orchestrator dropped a slow subscriber, a restart, ...).
      if (closed) return
      opts.onState('retrying')
      await new Promise((r) => setTimeout(r, delay))
      delay = Math.min(delay * 2, 30000)
    }
  }
  void run()
  return {
    close() {
      closed = true
      control.abort()
      opts.onState('closed')
    },
  }
}

/** A job's events (GET /v2/tasks/{id}/events) until its last one, or until `signal`. */
export async function streamTaskEvents(id: string, onEvent: (ev: JobEvent) => void,
  signal: AbortSignal, after = 0): Promise<void> {
  const body = await openStream('taskEvents', `/v2/tasks/${enc(id)}/events`,
    { signal, lastEventId: after ? String(after) : undefined })
  for await (const msg of readSse(body)) {
    let data: Record<string, unknown>
    try {
      data = JSON.parse(msg.data) as Record<string, unknown>
    } catch {
      continue
    }
    onEvent({ id: msg.id === null ? null : Number(msg.id), kind: msg.event, data })
  }
}

/** An error from a stream the caller aborted (Stop, leaving a view). */
export function isAbort(exc: unknown): boolean {
  return (exc instanceof DOMException && exc.name === 'AbortError')
    || (exc as ApiError | null)?.code === 'aborted'
}

/** POST /v1/chat/completions with stream: true; chunks as they come. */
export async function streamChat(req: ChatRequest, onChunk: (chunk: ChatChunk) => void,
  signal: AbortSignal): Promise<void> {
  const endpoint = ENDPOINTS.chat
  const body = await openStream('chat', '/v1/chat/completions', {
    body: { ...req, stream: true, stream_options: { include_usage: true } },
    signal,
  })
  for await (const msg of readSse(body)) {
    if (msg.data === '[DONE]') return
    let chunk: ChatChunk & { error?: ErrorObject }
    try {
      chunk = JSON.parse(msg.data)
    } catch {
      continue
    }
    if (chunk.error) {
      throw new ApiError(endpoint, 200, chunk.error.code, chunk.error.message, chunk.error.param ?? null)
    }
    onChunk(chunk)
  }
}
