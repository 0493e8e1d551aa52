"""llama-orch gateway: the OpenAI-compatible HTTP front of the orchestrator.

`create_app(orchestrator_address)` builds the ASGI app; `python -m gateway` serves it.
"""

from gateway.app import create_app

__all__ = ["create_app"]
