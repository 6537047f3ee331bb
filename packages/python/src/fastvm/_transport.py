"""One multiplexed HTTP/2 connection per client.

:class:`H2Transport` keeps a single HTTP/2 connection to the API server and runs every request of
the client as a stream on it, concurrently. It speaks TLS with ALPN ``h2`` for ``https://`` and
HTTP/2 with prior knowledge (h2c) for ``http://``; when a TLS server picks HTTP/1.1 by ALPN it
hands requests to httpx's own HTTP/1.1 transport instead.

Why not httpx's pooled HTTP/2 transport alone: a request cancelled there (a client-side timeout)
is forgotten without resetting its stream, so the server never learns that the client gave up.
For ``run()`` that matters: the server kills a command when its request goes away, and the SDK
promises exactly that on a timeout. Here a cancelled request sends ``RST_STREAM(CANCEL)``.

The connection is opened by :meth:`H2Transport.connect` (``FastVM.warmup()``) or lazily by the
first request, and reopened lazily after the server closes it (idle timeout, ``GOAWAY``).
Requests the server provably did not process (refused by ``GOAWAY``/``REFUSED_STREAM``, or sent
on a connection that was already closing) are retried on a new connection at once.

The protocol engine is ``h2`` driven from an :class:`asyncio.Protocol` (no reader task): frames
are handled in ``data_received`` and replies written immediately.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx

from ._exceptions import APIConnectionError, FastVMError

__all__ = ["H2Transport", "RawResponse", "default_ssl_context"]

Header = tuple[bytes, bytes]

# Flow-control windows we grant the server: responses (command output up to 2 x 4 MiB) flow
# without waiting for WINDOW_UPDATEs.
_STREAM_WINDOW = 4 * 1024 * 1024
_CONNECTION_WINDOW = 16 * 1024 * 1024

# Headers HTTP/2 forbids (RFC 9113 §8.2.2), and Host, which becomes :authority.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


@dataclass
class RawResponse:
    """A complete response: status, headers (lower-case names) and body."""

    status: int
    headers: list[Header]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    def header_dict(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}


class _Refused(APIConnectionError):
    """The server did not process the request (safe to send again on a new connection)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request_sent=False)


def default_ssl_context() -> ssl.SSLContext:
    """System trust store, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set (as httpx does)."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        try:
            import certifi  # httpx's dependency; its bundle is what httpx uses by default

            cafile = certifi.where()
        except ImportError:  # pragma: no cover
            pass
    return ssl.create_default_context(cafile=cafile, capath=capath)


class _GoawayTolerantStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that a received GOAWAY does not close it.

    After a GOAWAY the server still answers the streams it accepted (RFC 9113 §6.8: a graceful
    shutdown, e.g. its idle timeout or a restart), but h2 moves the whole connection to CLOSED
    and raises ProtocolError on their next frame. Here the connection stays open for them; the
    transport itself opens no new stream on it (``_H2Protocol.closed``).
    """

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if (
            input_ is h2.connection.ConnectionInputs.RECV_GOAWAY
            and self.state is not h2.connection.ConnectionState.CLOSED
        ):
            return []
        return super().process_input(input_)


class _Stream:
    __slots__ = ("id", "status", "headers", "chunks", "done", "ended", "sent")

    def __init__(self, stream_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.id = stream_id
        self.status = 0
        self.headers: list[Header] = []
        self.chunks: list[bytes] = []
        self.done: asyncio.Future[None] = loop.create_future()
        self.ended = False  # the server finished or reset the stream (or the connection died)
        self.sent = False  # the request went out completely (END_STREAM sent)

    def finish(self, error: BaseException | None = None) -> None:
        self.ended = True
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


class _H2Protocol(asyncio.Protocol):
    """One HTTP/2 client connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Outbound headers are built by this module (lower-case, valid): skip h2's re-checking.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.state_machine = _GoawayTolerantStateMachine()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        # No new streams once set: GOAWAY received, connection lost, or closed by us.
        self.closed = False
        self.ready: asyncio.Future[str | None] = loop.create_future()
        self._capacity = asyncio.Event()  # a stream slot or a flow-control window opened
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncio.Protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            if alpn != "h2":
                self.closed = True
                self.ready.set_result(alpn or "http/1.1")
                return
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            }
        )
        self.conn.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self._flush()
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self._flush()
            self._fail_all(APIConnectionError(f"HTTP/2 protocol error from the server: {err}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id) if event.stream_id else None
                if stream is not None and event.data:
                    stream.chunks.append(event.data)
                if event.stream_id:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    headers = list(_bytes_headers(event.headers))
                    for k, v in headers:
                        if k == b":status":
                            stream.status = int(v)
                    stream.headers = [(k, v) for k, v in headers if not k.startswith(b":")]
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.finish()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    code = event.error_code
                    if code == h2.errors.ErrorCodes.REFUSED_STREAM:
                        stream.finish(_Refused("the server refused the stream"))
                    else:
                        stream.finish(
                            APIConnectionError(f"the server reset the stream (HTTP/2 error {code})")
                        )
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
                last = event.last_stream_id if event.last_stream_id is not None else 0
                for stream in list(self.streams.values()):
                    if stream.id > last:
                        stream.finish(_Refused("the server closed the connection (GOAWAY)"))
                if not self._open_streams() and self.transport is not None:
                    self.transport.close()
            if isinstance(
                event,
                (
                    h2.events.WindowUpdated,
                    h2.events.RemoteSettingsChanged,
                    h2.events.StreamEnded,
                    h2.events.StreamReset,
                    h2.events.ConnectionTerminated,
                ),
            ):
                self._capacity.set()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc else ""
        self._fail_all(APIConnectionError(f"the connection to the server was lost{reason}"))
        if not self.ready.done():
            self.ready.set_exception(
                APIConnectionError(f"the server closed the connection{reason}", request_sent=False)
            )
        self._capacity.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Requests -----------------------------------------------------------------------------------

    async def request(self, headers: list[Header], body: bytes | None) -> RawResponse:
        """Run one request as a stream. Cancellation resets the stream."""
        conn = self.conn
        while True:
            if self.closed:
                raise _Refused("the connection is closing")
            if conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
                break
            self._capacity.clear()
            await self._capacity.wait()
        stream_id = conn.get_next_available_stream_id()
        stream = _Stream(stream_id, self.loop)
        self.streams[stream_id] = stream
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                # Headers and the first DATA frame leave in one write (one packet for small bodies).
                await self._send_body(stream, body)
            else:
                stream.sent = True
                self._flush()
            await stream.done
            if not stream.sent:
                # The server answered before reading the whole body: close our half too.
                self._reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except BaseException:
            if not stream.ended:
                # Cancelled (timeout) or failed while the server may still be working on it.
                self._reset(stream_id, h2.errors.ErrorCodes.CANCEL)
            raise
        finally:
            del self.streams[stream_id]
            self._capacity.set()
            if self.closed and not self._open_streams() and self.transport is not None:
                self.transport.close()
        return RawResponse(stream.status, stream.headers, b"".join(stream.chunks))

    async def _send_body(self, stream: _Stream, body: bytes) -> None:
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            if stream.ended:
                return  # the server answered (or reset it, or the connection died) meanwhile
            window = min(
                self.conn.local_flow_control_window(stream.id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self._flush()
                self._capacity.clear()
                await self._capacity.wait()
                continue
            chunk = view[offset : offset + window]
            offset += len(chunk)
            self.conn.send_data(stream.id, chunk.tobytes(), end_stream=offset >= len(body))
            stream.sent = offset >= len(body)
            self._flush()
            if not self._writable.is_set():
                await self._writable.wait()

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.conn.reset_stream(stream_id, code)
            self._flush()
        except h2.exceptions.H2Error:
            pass  # already closed on the h2 level

    def close(self) -> None:
        """Sends GOAWAY and closes the socket (in-flight streams fail)."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self.closed:
            self.closed = True
            try:
                self.conn.close_connection()
                self._flush()
            except h2.exceptions.H2Error:
                pass
        self.transport.close()

    # Internals ----------------------------------------------------------------------------------

    def _open_streams(self) -> int:
        return sum(1 for s in self.streams.values() if not s.ended)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail_all(self, error: APIConnectionError) -> None:
        for stream in list(self.streams.values()):
            stream.finish(error)


def _bytes_headers(headers: object) -> list[Header]:
    out: list[Header] = []
    if isinstance(headers, list):
        for k, v in headers:
            out.append(
                (
                    k if isinstance(k, bytes) else str(k).encode(),
                    v if isinstance(v, bytes) else str(v).encode(),
                )
            )
    return out


class H2Transport(httpx.AsyncBaseTransport):
    """An httpx transport that runs every request on one HTTP/2 connection to ``base_url``.

    Besides the httpx interface (:meth:`handle_async_request`), :meth:`request` takes ready-made
    HTTP/2 headers for the SDK's own calls. ``connections_opened`` counts TCP connections made.
    """

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r} (use http:// or https://)")
        self.scheme = url.scheme
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.authority = url.netloc
        self._ssl_context = (
            (ssl_context or default_ssl_context()) if url.scheme == "https" else None
        )
        if self._ssl_context is not None:
            self._ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.connections_opened = 0
        self.negotiated: str | None = None  # "h2", "h2c" or "http/1.1" once connected
        self._protocol: _H2Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._http1: httpx.AsyncHTTPTransport | None = None
        self._closed = False

    async def connect(self) -> None:
        """Opens the connection now (no-op when it is open)."""
        await self._connection()

    async def request(
        self, method: str, path: str, headers: list[Header], body: bytes | None
    ) -> RawResponse:
        """Sends one request; ``path`` is the absolute path (with query), ``headers`` lower-case."""
        for attempt in range(3):
            protocol = await self._connection()
            if protocol is None:
                return await self._request_http1(method, path, headers, body)
            h2_headers: list[Header] = [
                (b":method", method.encode()),
                (b":scheme", self.scheme.encode()),
                (b":authority", self.authority),
                (b":path", path.encode()),
            ]
            h2_headers.extend(headers)
            if body:
                h2_headers.append((b"content-length", str(len(body)).encode()))
            try:
                return await protocol.request(h2_headers, body)
            except _Refused:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.raw_path.decode("ascii")
        headers = [(k.lower(), v) for k, v in request.headers.raw if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        raw = await self.request(request.method, path, headers, body or None)
        return httpx.Response(
            raw.status,
            headers=raw.headers,
            content=raw.body,
            request=request,
            extensions={"http_version": b"HTTP/2" if self.negotiated != "http/1.1" else b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
        if self._http1 is not None:
            await self._http1.aclose()
            self._http1 = None

    # Internals ----------------------------------------------------------------------------------

    async def _connection(self) -> _H2Protocol | None:
        """The open HTTP/2 connection (opened if needed), or None when HTTP/1.1 was negotiated."""
        if self._closed:
            raise FastVMError("the client is closed")
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        if protocol is not None and not protocol.closed and protocol.loop is loop:
            return protocol
        if self._http1 is not None:
            return None
        if self._loop is not loop or self._lock is None:
            # First use, or a new event loop (e.g. a second asyncio.run): start over on it.
            if self._protocol is not None:
                try:
                    self._protocol.close()
                except RuntimeError:  # its event loop is closed already
                    pass
                self._protocol = None
            self._loop = loop
            self._lock = asyncio.Lock()
        async with self._lock:
            protocol = self._protocol
            if protocol is not None and not protocol.closed:
                return protocol
            if self._http1 is not None:
                return None
            protocol = await self._open(loop)
            if protocol is None:
                return None
            self._protocol = protocol
            return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _H2Protocol | None:
        protocol = _H2Protocol(loop)
        try:
            await loop.create_connection(
                lambda: protocol,
                self.host,
                self.port,
                ssl=self._ssl_context,
                server_hostname=self.host if self._ssl_context is not None else None,
            )
        except (OSError, ssl.SSLError) as err:
            target = f"{self.scheme}://{self.authority.decode()}"
            raise APIConnectionError(
                f"cannot connect to {target}: {err}", request_sent=False
            ) from err
        self.connections_opened += 1
        try:
            alpn = await protocol.ready
        except BaseException:
            protocol.close()
            raise
        if alpn is not None:
            # The TLS server chose HTTP/1.1: use httpx's HTTP/1.1 transport from now on.
            protocol.close()
            self.negotiated = "http/1.1"
            self._http1 = httpx.AsyncHTTPTransport(
                verify=self._ssl_context or True, http1=True, http2=False, retries=0
            )
            return None
        self.negotiated = "h2" if self.scheme == "https" else "h2c"
        return protocol

    async def _request_http1(
        self, method: str, path: str, headers: list[Header], body: bytes | None
    ) -> RawResponse:
        assert self._http1 is not None
        url = f"{self.scheme}://{self.authority.decode()}{path}"
        request = httpx.Request(method, url, headers=headers, content=body)
        try:
            response = await self._http1.handle_async_request(request)
            content = await response.aread()
        except httpx.TransportError as err:
            sent = not isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout))
            raise APIConnectionError(str(err) or type(err).__name__, request_sent=sent) from err
        return RawResponse(
            response.status_code, [(k.lower(), v) for k, v in response.headers.raw], content
        )
