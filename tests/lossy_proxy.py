"""A TCP relay in front of the gateway that loses answers, as a flaky network does.

Each connection is relayed byte for byte (TLS passes through untouched). After the TLS
handshake, a chunk coming back from the gateway is lost with probability `loss`: the relay
closes both sides instead of passing it on. The gateway has then handled the request (an
answer exists only once the request was processed: for a log POST, once ingest fsynced the
batch), but osquery never sees the answer, keeps its lines and sends them again merged
with newer ones (osquery-protocol.md §7.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

# Chunks from the gateway that are never lost on a connection: the TLS handshake's. Over
# TLS 1.3 the server sends one flight (ServerHello through Finished) and no session tickets
# after it (docs/security.md), so every later chunk is an answer: the gateway writes each
# answer's head and body in one write (docs/performance.md, "The gateway's cost per request").
HANDSHAKE_CHUNKS = 1


class LossyProxy:
    def __init__(self, target_port: int, loss: float, seed: int) -> None:
        self.target_port = target_port
        self.loss = loss
        self.random = random.Random(seed)
        self.lost_answers = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.close()
            return
        upstream = asyncio.create_task(self._pipe(client_in, server_out))
        try:
            await self._answers(server_in, client_out)
        finally:
            upstream.cancel()
            for writer in (client_out, server_out):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def _answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                chunks += 1
                if chunks > HANDSHAKE_CHUNKS and self.random.random() < self.loss:
                    self.lost_answers += 1
                    return
                writer.write(data)
                await writer.drain()
