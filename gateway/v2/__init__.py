"""The native /v2 API: tasks (submit, list, status, cancel, resumable SSE events), the
fact stream, the cluster snapshot and /v2/info (thin over ClientService), and the
operator's actions under /v2/admin (thin over AdminService). docs/API.md shows it by
example; docs/UI.md details the routes the web UI uses."""
