from __future__ import annotations

from llama_orch_sdk._transport import Transport


class Resource:
    def __init__(self, transport: Transport):
        self._t = transport
