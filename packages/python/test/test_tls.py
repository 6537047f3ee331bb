"""TLS: ALPN h2 against the real server's TLS listener (FakeRuntime, a certificate made here),
certificate checking, and the HTTP/1.1 fallback when a TLS server does not offer h2."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CountingProxy, NodeServer, make_cert, node_available

from fastvm import APIConnectionError, FastVM, FirewallPolicy, NotFoundError, PatchFirewallPolicy


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(cert: tuple[Path, Path]) -> Iterator[NodeServer]:
    if not node_available():
        pytest.skip("node and the repository's node_modules are needed for the real server")
    server = NodeServer(fake_runtime=True, tls=cert)
    try:
        yield server
    finally:
        server.stop()


async def test_every_method_over_tls_h2_on_one_connection(
    tls_server: NodeServer, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_server.url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    monkeypatch.setenv("FASTVM_API_KEY", tls_server.key)
    proxy = await CountingProxy("127.0.0.1", tls_server.port).start()
    monkeypatch.setenv("FASTVM_BASE_URL", f"https://localhost:{proxy.port}")
    try:
        async with FastVM() as client:
            assert client._transport.negotiated == "h2"
            vm = await client.launch(machine="c1m2", name="tls-vm")
            assert (vm.status, vm.name, vm.cpu, vm.memory_mib) == ("running", "tls-vm", 1, 2048)
            assert (await client.get(vm.id)).name == "tls-vm"
            assert (await client.get("tls-vm")).id == vm.id
            vm = await client.rename(vm, "tls-renamed")
            vm = await client.set_firewall(vm, FirewallPolicy(mode="open"))
            assert vm.firewall == FirewallPolicy(mode="open")
            vm = await client.patch_firewall(vm, PatchFirewallPolicy(mode="restricted"))
            assert vm.firewall is not None and vm.firewall.mode == "restricted"
            assert (await client.run(vm, "echo hello")).stdout == "hello\n"
            snap = await client.snapshot(vm, name="tls-snap")
            assert snap.status == "ready" and snap.vm_id == vm.id
            branches = await asyncio.gather(
                *(client.restore(snap, name=f"tls-branch-{i}") for i in range(10))
            )
            results = await asyncio.gather(
                *(client.run(b, f"echo {i}") for i, b in enumerate(branches))
            )
            assert [r.exit_code for r in results] == [0] * 10
            assert {b.source_name for b in branches} == {"tls-snap"}
            snap = await client.rename_snapshot(snap, "tls-snap-2")
            assert [s.name for s in await client.list_snapshots()] == ["tls-snap-2"]
            usage = await client.quotas()
            assert usage.usage.vcpu == 11 and usage.usage.snapshot_count == 1
            assert len(await client.list()) == 11
            for b in branches:
                await client.remove(b)
            await client.remove(vm)
            await client.remove_snapshot(snap)
            assert await client.list() == []
            with pytest.raises(NotFoundError):
                await client.get(vm.id)
        assert proxy.connections == 1
    finally:
        await proxy.close()


async def test_an_untrusted_certificate_is_refused(tls_server: NodeServer) -> None:
    client = FastVM(api_key=tls_server.key, base_url=f"https://localhost:{tls_server.port}")
    with pytest.raises(APIConnectionError, match="(?i)certificate") as info:
        await client.warmup()
    assert info.value.request_sent is False
    await client.close()


async def test_http1_only_tls_server_is_reached_over_http1(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    ctx.set_alpn_protocols(["http/1.1"])
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                seen.append(lines[0])
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                body = json.dumps([] if "/v1/vms" in lines[0] else {"status": "ok"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    try:
        async with FastVM(api_key="k", base_url=f"https://localhost:{port}") as client:
            assert await client.list() == []
            assert client._transport.negotiated == "http/1.1"
        assert seen == ["GET /healthz HTTP/1.1", "GET /v1/vms HTTP/1.1"]
    finally:
        server.close()
