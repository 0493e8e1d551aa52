// A hash router in a few lines (#/jobs/job-7f3a): the gateway serves one index.html at
// /ui/, so no server-side fallback is needed for deep links.
import { ref } from 'vue'

export const VIEWS = [
  { id: 'cluster', title: 'Cluster' },
  { id: 'queue', title: 'Queue' },
  { id: 'jobs', title: 'Jobs' },
  { id: 'models', title: 'Models' },
  { id: 'events', title: 'Events' },
  { id: 'policy', title: 'Policy' },
  { id: 'playground', title: 'Playground' },
] as const

export type ViewId = (typeof VIEWS)[number]['id']

function parse(): { view: ViewId; arg: string | null } {
  const parts = window.location.hash.replace(/^#\/?/, '').split('/')
  const view = (VIEWS.find((v) => v.id === parts[0])?.id ?? 'cluster') as ViewId
  const arg = parts.length > 1 && parts[1] ? decodeURIComponent(parts.slice(1).join('/')) : null
  return { view, arg }
}

export const route = ref(parse())

window.addEventListener('hashchange', () => {
  route.value = parse()
})

export function go(view: ViewId, arg?: string | null): void {
  window.location.hash = `#/${view}${arg ? `/${encodeURIComponent(arg)}` : ''}`
}

export function href(view: ViewId, arg?: string | null): string {
  return `#/${view}${arg ? `/${encodeURIComponent(arg)}` : ''}`
}
