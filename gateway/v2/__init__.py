"""The native /v2 API: tasks (submit, status, cancel, resumable SSE events) and the
fact stream, thin over ClientService. docs/API.md shows it by example."""
