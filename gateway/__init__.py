"""llama-orch gateway: the HTTP front of the orchestrator, OpenAI-compatible under /v1
and llama-orch's native task API under /v2 (docs/API.md).

`create_app(orchestrator_address)` builds the ASGI app; `python -m gateway` serves it.
"""

from gateway.app import create_app

__all__ = ["create_app"]
