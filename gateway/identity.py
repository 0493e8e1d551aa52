"""The gateway's client certificate, followed on disk.

With TLS the gateway dials the orchestrator with the certificate LLAMA_ORCH_TLS_KEY/
CERT/CA name (common/tls.py). Certificates expire (security.cert_ttl_s, 7 days by
default); `llama-orch up` writes a renewed one over the same files when a third of the
lifetime is left, and an operator running the gateway alone can do the same with
`llama-orch ca issue`. gRPC reads a channel's certificate once, when the channel is
made, so every tls.check_interval_s() (30 s) this watch stats the files and, when they
changed and the new key matches the new certificate, gives the client a new channel for
new requests.
The previous channel keeps the streams already open on it and is closed once they
could have ended (OLD_CHANNEL_GRACE_S: the longest job deadline).
"""

from __future__ import annotations

import asyncio

from common import grpc_server, log, tls
from common.errors import OrchError
from gateway.orchestrator_client import OrchestratorClient

OLD_CHANNEL_GRACE_S = 30 * 60.0


class IdentityWatch:
    """Rebinds `client` to a new channel when the installed identity's files change."""

    def __init__(self, client: OrchestratorClient, address: str,
                 identity: tuple[tls.Material, object]):
        self.client, self.address = client, address
        self.material, self._name_for = identity
        self._paths = (self.material.key, self.material.cert, self.material.ca)
        self._stamp = tls.file_stamp(self._paths)
        self._retiring: dict[asyncio.Task, object] = {}  # close task -> old channel

    async def check(self) -> bool:
        """Rebind if the files changed to a matching pair; True when it did."""
        stamp = tls.file_stamp(self._paths)
        if stamp == self._stamp:
            return False
        try:
            # In a thread: reading waits (up to 0.5 s) for a key and certificate that match.
            credentials = await asyncio.to_thread(tls.channel_credentials, self.material)
        except (OSError, ValueError, OrchError) as exc:
            # Mid-write or unreadable: keep the current channel and look again later.
            log.emit("gateway", "tls.identity_unreadable", str(exc), level="warning")
            return False
        self._stamp = stamp
        channel = grpc_server.channel(self.address, credentials,
                                      target_name=self._name_for(self.address))
        previous = self.client.rebind(channel)
        if previous is not None:
            task = asyncio.get_running_loop().create_task(previous.close(OLD_CHANNEL_GRACE_S))
            self._retiring[task] = previous
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        log.emit("gateway", "tls.identity_renewed", "new requests use the renewed client "
                 "certificate; open streams keep theirs", cert=str(self.material.cert))
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(tls.check_interval_s())
            await self.check()

    async def close(self) -> None:
        """Close the channels kept for open streams (the client's own is its owner's)."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        await asyncio.gather(*(channel.close() for _, channel in retiring),
                             return_exceptions=True)


def watch(client: OrchestratorClient, address: str) -> IdentityWatch | None:
    """A watch on the installed identity, or None when the gateway dials plaintext."""
    identity = tls.installed()
    return IdentityWatch(client, address, identity) if identity is not None else None
