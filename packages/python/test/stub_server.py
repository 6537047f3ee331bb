"""A scriptable HTTP/2 (h2c, prior knowledge) server for the unit tests.

Routes map ``(method, path regex)`` to a handler that returns a :class:`Reply` (or a list of
replies, served in order, the last one repeating). The server records every request, counts
connections, notices streams the client reset, and can send GOAWAY.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Union

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


@dataclass
class StubRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON unless bytes/str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    refuse: bool = False  # RST_STREAM(REFUSED_STREAM) instead of an answer
    goaway_after: bool = False  # send GOAWAY after this answer


Handler = Callable[[StubRequest], Union[Reply, Awaitable[Reply]]]


class _GracefulGoaway(h2.connection.H2ConnectionStateMachine):
    """Lets the stub keep answering accepted streams after it sent GOAWAY (as real servers do)."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if (
            input_ is h2.connection.ConnectionInputs.SEND_GOAWAY
            and self.state is not h2.connection.ConnectionState.CLOSED
        ):
            return []
        return super().process_input(input_)


class _Conn(asyncio.Protocol):
    def __init__(self, server: StubServer, index: int) -> None:
        self.server = server
        self.index = index
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.conn.state_machine = _GracefulGoaway()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.window = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            assert self.transport is not None
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                headers = [(str(k), str(v)) for k, v in ev.headers or []]
                self.pending[ev.stream_id] = (headers, bytearray())
                h = dict(headers)
                if self.server.answers_early(h.get(":method", ""), h.get(":path", "")):
                    # Answer before the body arrived (as a server refusing a large upload does).
                    del self.pending[ev.stream_id]
                    self.tasks[ev.stream_id] = asyncio.ensure_future(
                        self.serve(ev.stream_id, headers, b"")
                    )
            elif isinstance(ev, h2.events.DataReceived):
                self.server.bytes_received += len(ev.data or b"")
                if ev.stream_id in self.pending:
                    self.pending[ev.stream_id][1].extend(ev.data or b"")
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id not in self.pending:
                    continue
                headers, body = self.pending.pop(ev.stream_id)
                self.tasks[ev.stream_id] = asyncio.ensure_future(
                    self.serve(ev.stream_id, headers, bytes(body))
                )
            elif isinstance(ev, h2.events.StreamReset):
                task = self.tasks.pop(ev.stream_id, None)
                self.server.resets.append(ev.stream_id)
                if task is not None:
                    task.cancel()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self.window.set()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.window.set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def serve(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        h = dict(headers)
        req = StubRequest(
            method=h.get(":method", ""),
            path=h.get(":path", ""),
            headers={k: v for k, v in headers if not k.startswith(":")},
            body=body,
            connection=self.index,
        )
        self.server.requests.append(req)
        reply = await self.server.dispatch(req)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.refuse:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.flush()
            self.tasks.pop(stream_id, None)
            return
        if isinstance(reply.body, bytes):
            payload = reply.body
            ctype = "application/octet-stream"
        elif isinstance(reply.body, str):
            payload = reply.body.encode()
            ctype = "text/plain"
        elif reply.body is None:
            payload = b""
            ctype = "application/json"
        else:
            payload = json.dumps(reply.body).encode()
            ctype = "application/json; charset=utf-8"
        out = [(":status", str(reply.status)), ("content-type", ctype)]
        out += [(k.lower(), v) for k, v in reply.headers.items()]
        out.append(("content-length", str(len(payload))))
        self.conn.send_headers(stream_id, out, end_stream=not payload)
        self.flush()
        offset = 0
        while offset < len(payload):
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            chunk = payload[offset : offset + window]
            offset += len(chunk)
            self.conn.send_data(stream_id, chunk, end_stream=offset >= len(payload))
            self.flush()
        self.tasks.pop(stream_id, None)
        if reply.goaway_after:
            self.conn.close_connection(last_stream_id=stream_id)
            self.flush()


class StubServer:
    """Start with ``await StubServer().start()``; ``url`` is then ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.early: list[tuple[str, re.Pattern[str]]] = []
        self.bytes_received = 0
        self.requests: list[StubRequest] = []
        self.resets: list[int] = []
        self.connections: list[_Conn] = []
        self._server: asyncio.base_events.Server | None = None
        self.url = ""

    async def start(self) -> StubServer:
        loop = asyncio.get_running_loop()

        def factory() -> _Conn:
            conn = _Conn(self, len(self.connections))
            self.connections.append(conn)
            return conn

        self._server = await loop.create_server(factory, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(
        self,
        method: str,
        pattern: str,
        handler: Handler | Reply | list[Reply],
        *,
        early: bool = False,
    ) -> None:
        """Adds a route (newest first). ``pattern`` must match the whole path (query included).
        ``early``: answer as soon as the headers arrive, without reading the body."""
        if early:
            self.early.append((method, re.compile(pattern)))
        if isinstance(handler, Reply):
            fixed = handler
            handler = lambda _req: fixed  # noqa: E731
        elif isinstance(handler, list):
            replies = list(handler)
            handler = lambda _req: replies.pop(0) if len(replies) > 1 else replies[0]  # noqa: E731
        self.routes.insert(0, (method, re.compile(pattern), handler))

    def answers_early(self, method: str, path: str) -> bool:
        return any(m == method and p.fullmatch(path) for m, p in self.early)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    async def dispatch(self, req: StubRequest) -> Reply:
        for method, pattern, handler in self.routes:
            if method == req.method and pattern.fullmatch(req.path):
                result = handler(req)
                if inspect.isawaitable(result):
                    result = await result
                assert isinstance(result, Reply)
                return result
        return Reply(404, {"error": f"no stub route for {req.method} {req.path}", "code": "not_found"})

    def goaway(self) -> None:
        """GOAWAY on every open connection (in-flight streams still complete)."""
        for conn in self.connections:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.conn.close_connection()
                conn.flush()
