"""Unit tests: every method, error and timeout, against the h2c stub server."""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from helpers import CountingProxy, exec_wire, snapshot_wire, vm_wire
from stub_server import Reply, StubRequest, StubServer

import fastvm
from fastvm import (
    VM,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CommandResult,
    ConflictError,
    FastVM,
    FastVMError,
    FirewallPolicy,
    FirewallRule,
    InternalServerError,
    NotFoundError,
    OrgQuotaUsage,
    OrgQuotaValues,
    PatchFirewallPolicy,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    Snapshot,
    SnapshotError,
    SnapshotNotReadyError,
    UnprocessableEntityError,
    VMLaunchError,
    VMNotReadyError,
)

VM_ID = vm_wire()["id"]
SNAP_ID = snapshot_wire()["id"]


@pytest.fixture
async def client(stub: StubServer) -> AsyncIterator[FastVM]:
    async with FastVM(api_key="k-123", base_url=stub.url, max_retries=2) as c:
        yield c


def is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except ValueError:
        return False
    return True


# Construction and configuration ------------------------------------------------------------------


def test_missing_api_key_is_a_clear_error() -> None:
    with pytest.raises(FastVMError, match="FASTVM_API_KEY"):
        FastVM()


def test_empty_api_key_env_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTVM_API_KEY", "  ")
    with pytest.raises(FastVMError, match="No API key"):
        FastVM()


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTVM_API_KEY", "from-env")
    monkeypatch.setenv("FASTVM_BASE_URL", "http://127.0.0.1:9/")
    c = FastVM()
    assert c.api_key == "from-env"
    assert c.base_url == "http://127.0.0.1:9"
    assert c.timeout == 300.0


def test_defaults_and_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTVM_API_KEY", "from-env")
    assert FastVM().base_url == "https://api.fastvm.org" == fastvm.DEFAULT_BASE_URL
    monkeypatch.setenv("FASTVM_BASE_URL", "")
    assert FastVM().base_url == "https://api.fastvm.org"
    c = FastVM(api_key="explicit", base_url="https://example.test/api/", timeout=5)
    assert (c.api_key, c.base_url, c.timeout) == ("explicit", "https://example.test/api", 5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://x"},
        {"timeout": 0},
        {"timeout": -1.0},
        {"max_retries": -1},
    ],
)
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(FastVMError):
        FastVM(api_key="k", **kwargs)  # type: ignore[arg-type]


def test_signature_matches_the_seed() -> None:
    import inspect

    sig = inspect.signature(FastVM.__init__)
    params = builtins.list(sig.parameters.values())[1:4]
    assert [(p.name, p.default) for p in params] == [
        ("api_key", None),
        ("base_url", None),
        ("timeout", 300.0),
    ]
    launch = inspect.signature(FastVM.launch).parameters
    assert all(
        launch[n].kind is inspect.Parameter.KEYWORD_ONLY
        for n in ("machine", "name", "disk_gib", "firewall", "timeout")
    )
    assert launch["machine"].default == "c1m2" and launch["timeout"].default == 300.0
    run = inspect.signature(FastVM.run).parameters
    assert run["timeout_sec"].kind is inspect.Parameter.KEYWORD_ONLY
    assert run["timeout"].default is None
    snap = inspect.signature(FastVM.snapshot).parameters
    assert snap["name"].default == "" and snap["timeout"].default == 300.0


async def test_async_with_warms_up_one_connection_and_sends_the_key(stub: StubServer) -> None:
    async with FastVM(api_key="k-123", base_url=stub.url) as c:
        assert len(stub.connections) == 1
        assert stub.paths() == ["/healthz"]
        req = stub.requests[0]
        assert req.headers["x-api-key"] == "k-123"
        assert req.headers["accept"] == "application/json"
        assert req.headers["user-agent"].startswith("fastvm-python/")
        assert c._transport.negotiated == "h2c"
    await asyncio.sleep(0.05)
    assert stub.connections[0].transport is None or stub.connections[0].transport.is_closing()


async def test_without_warmup_the_first_call_connects(stub: StubServer) -> None:
    stub.route("GET", "/v1/vms", Reply(200, []))
    c = FastVM(api_key="k", base_url=stub.url)
    try:
        assert await c.list() == []
        assert len(stub.connections) == 1
    finally:
        await c.close()
    with pytest.raises(FastVMError, match="closed"):
        await c.list()


async def test_base_url_path_prefix_is_kept(stub: StubServer) -> None:
    stub.route("GET", "/fastvm/v1/vms", Reply(200, [vm_wire()]))
    stub.route("GET", "/fastvm/healthz", Reply(200, {"status": "ok"}))
    async with FastVM(api_key="k", base_url=stub.url + "/fastvm/") as c:
        assert [v.id for v in await c.list()] == [VM_ID]
    assert stub.paths() == ["/fastvm/healthz", "/fastvm/v1/vms"]


# VMs --------------------------------------------------------------------------------------------


async def test_launch_sends_the_seed_parameters_and_maps_the_vm(
    stub: StubServer, client: FastVM
) -> None:
    stub.route("POST", "/v1/vms", Reply(201, vm_wire(machineName="c2m4", cpu=2, diskGiB=20)))
    vm = await client.launch(machine="c2m4", name="my-vm", disk_gib=20)
    assert stub.requests[-1].json == {"machineType": "c2m4", "name": "my-vm", "diskGiB": 20}
    assert stub.requests[-1].headers["content-type"] == "application/json"
    assert vm == VM(
        id=VM_ID,
        name="my-vm",
        org_id="org-1",
        machine_name="c2m4",
        cpu=2,
        memory_mib=2048,
        disk_gib=20,
        status="running",
        created_at="2026-01-02T03:04:05.678Z",
        source_name="",
        public_ipv6="fd00::1234",
        firewall=FirewallPolicy(mode="restricted", ingress=[]),
        deleted_at=None,
    )


async def test_launch_defaults_c1m2_and_a_uuid_name(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(201, vm_wire()))
    await client.launch()
    body = stub.requests[-1].json
    assert body["machineType"] == "c1m2"
    assert is_uuid(body["name"])
    assert set(body) == {"machineType", "name"}


async def test_launch_with_firewall_sends_the_wire_shape(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(201, vm_wire()))
    policy = FirewallPolicy(
        mode="restricted",
        ingress=[
            FirewallRule(protocol="tcp", port_start=22, description="SSH"),
            FirewallRule(protocol="udp", port_start=6000, port_end=6010, source_cidrs=["2001:db8::/32"]),
        ],
    )
    await client.launch(firewall=policy)
    assert stub.requests[-1].json["firewall"] == {
        "mode": "restricted",
        "ingress": [
            {"protocol": "tcp", "portStart": 22, "description": "SSH"},
            {"protocol": "udp", "portStart": 6000, "portEnd": 6010, "sourceCidrs": ["2001:db8::/32"]},
        ],
    }


async def test_launch_polls_until_running(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(202, vm_wire(status="provisioning")))
    stub.route(
        "GET",
        f"/v1/vms/{VM_ID}",
        [Reply(200, vm_wire(status="provisioning")), Reply(200, vm_wire(status="running"))],
    )
    vm = await client.launch()
    assert vm.status == "running"
    assert stub.paths("GET")[-2:] == [f"/v1/vms/{VM_ID}"] * 2


@pytest.mark.parametrize("status", ["error", "stopped", "deleting"])
async def test_launch_that_fails_raises_vm_launch_error(
    stub: StubServer, client: FastVM, status: str
) -> None:
    stub.route("POST", "/v1/vms", Reply(202, vm_wire(status="provisioning")))
    stub.route("GET", f"/v1/vms/{VM_ID}", Reply(200, vm_wire(status=status)))
    with pytest.raises(VMLaunchError) as info:
        await client.launch()
    assert (info.value.vm_id, info.value.status) == (VM_ID, status)


async def test_launch_timeout_raises_vm_not_ready(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(202, vm_wire(status="provisioning")))
    stub.route("GET", f"/v1/vms/{VM_ID}", Reply(200, vm_wire(status="provisioning")))
    started = time.monotonic()
    with pytest.raises(VMNotReadyError) as info:
        await client.launch(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2
    assert isinstance(info.value, TimeoutError)
    assert info.value.status == "provisioning"


async def test_launch_timeout_covers_a_slow_post(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(201, vm_wire(), delay=5))
    with pytest.raises(APITimeoutError):
        await client.launch(timeout=0.3)
    await asyncio.sleep(0.1)
    assert stub.resets, "the timed-out request was not reset on the wire"


async def test_restore_accepts_a_snapshot_object_or_id(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/vms", Reply(201, vm_wire(sourceName="my-snap")))
    snap = Snapshot(
        id=SNAP_ID, name="s", org_id="o", vm_id=VM_ID, status="ready", created_at="t"
    )
    vm = await client.restore(snap, name="worker-01")
    assert stub.requests[-1].json == {"snapshotId": SNAP_ID, "name": "worker-01"}
    assert vm.source_name == "my-snap"
    await client.restore("my-snap", firewall=FirewallPolicy(mode="open"))
    body = stub.requests[-1].json
    assert body["snapshotId"] == "my-snap" and is_uuid(body["name"])
    assert body["firewall"] == {"mode": "open", "ingress": []}


async def test_get_accepts_id_name_or_object(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", r"/v1/vms/[^/]+", Reply(200, vm_wire()))
    vm = await client.get(VM_ID)
    await client.get(vm)
    await client.get("my vm/1")
    assert stub.paths("GET")[-3:] == [
        f"/v1/vms/{VM_ID}",
        f"/v1/vms/{VM_ID}",
        "/v1/vms/my%20vm%2F1",
    ]
    with pytest.raises(FastVMError):
        await client.get("..")
    with pytest.raises(FastVMError):
        await client.get("")


async def test_list_maps_every_vm(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/vms", Reply(200, [vm_wire(), vm_wire(id="b", name="two", firewall=None)]))
    vms = await client.list()
    assert [(v.id, v.name, v.firewall) for v in vms][1] == ("b", "two", None)
    assert isinstance(vms, builtins.list) and len(vms) == 2


async def test_remove(stub: StubServer, client: FastVM) -> None:
    stub.route("DELETE", f"/v1/vms/{VM_ID}", Reply(200, {"id": VM_ID, "deleted": True}))
    await client.remove(VM_ID)
    assert stub.requests[-1].method == "DELETE"
    assert "content-type" not in stub.requests[-1].headers


async def test_rename(stub: StubServer, client: FastVM) -> None:
    stub.route("PATCH", f"/v1/vms/{VM_ID}", Reply(200, vm_wire(name="new-name")))
    vm = await client.rename(VM_ID, "new-name")
    assert stub.requests[-1].json == {"name": "new-name"}
    assert vm.name == "new-name"


async def test_set_and_patch_firewall(stub: StubServer, client: FastVM) -> None:
    stub.route("PUT", f"/v1/vms/{VM_ID}/firewall", Reply(200, vm_wire(firewall={"mode": "open"})))
    vm = await client.set_firewall(VM_ID, FirewallPolicy(mode="open"))
    assert stub.requests[-1].json == {"mode": "open", "ingress": []}
    assert vm.firewall == FirewallPolicy(mode="open", ingress=[])

    rule = {"protocol": "tcp", "portStart": 22, "portEnd": 23, "sourceCidrs": ["::/0"], "x": 1}
    stub.route(
        "PATCH",
        f"/v1/vms/{VM_ID}/firewall",
        Reply(200, vm_wire(firewall={"mode": "restricted", "ingress": [rule]})),
    )
    vm = await client.patch_firewall(vm, PatchFirewallPolicy(mode="restricted"))
    assert stub.requests[-1].json == {"mode": "restricted"}
    assert vm.firewall is not None
    assert vm.firewall.ingress == [
        FirewallRule(protocol="tcp", port_start=22, port_end=23, source_cidrs=["::/0"])
    ]
    await client.patch_firewall(vm, PatchFirewallPolicy(ingress=[]))
    assert stub.requests[-1].json == {"ingress": []}


# Commands ---------------------------------------------------------------------------------------


async def test_run_string_is_sh_c_and_maps_the_result(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(durationMs=42)))
    result = await client.run(VM_ID, "echo hello")
    assert stub.requests[-1].json == {"command": ["sh", "-c", "echo hello"]}
    assert result == CommandResult(
        exit_code=0,
        stdout="hello\n",
        stderr="",
        timed_out=False,
        stdout_truncated=False,
        stderr_truncated=False,
        duration_ms=42,
    )


async def test_run_list_is_argv_and_timeout_sec_is_sent(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        f"/v1/vms/{VM_ID}/exec",
        Reply(200, exec_wire(exitCode=124, timedOut=True, stdoutTruncated=True)),
    )
    result = await client.run(VM_ID, ["python3", "--version"], timeout_sec=5)
    assert stub.requests[-1].json == {"command": ["python3", "--version"], "timeoutSec": 5}
    assert (result.exit_code, result.timed_out, result.stdout_truncated) == (124, True, True)
    with pytest.raises(FastVMError):
        await client.run(VM_ID, [])


async def test_run_client_timeout_resets_the_stream(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=10))
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as info:
        await client.run(VM_ID, "sleep 100", timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 2
    await asyncio.sleep(0.1)
    assert len(stub.resets) == 1
    # The connection is still good for the next call.
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire()))
    assert (await client.run(VM_ID, "true")).exit_code == 0
    assert len(stub.connections) == 1


async def test_run_default_timeout_is_the_clients(stub: StubServer) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=10))
    async with FastVM(api_key="k", base_url=stub.url, timeout=0.3) as c:
        with pytest.raises(APITimeoutError):
            await c.run(VM_ID, "sleep 100")


async def test_cancelling_run_resets_the_stream(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=10))
    task = asyncio.ensure_future(client.run(VM_ID, "sleep 100"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert len(stub.resets) == 1


async def test_run_is_not_retried_after_a_server_error(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        f"/v1/vms/{VM_ID}/exec",
        Reply(502, {"error": "agent gone", "code": "vm_unavailable"}),
    )
    with pytest.raises(InternalServerError) as info:
        await client.run(VM_ID, "true")
    assert info.value.code == "vm_unavailable"
    assert len(stub.paths("POST")) == 1


async def test_large_output_flows(stub: StubServer, client: FastVM) -> None:
    big = "x" * (5 * 1024 * 1024)
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(stdout=big)))
    results = await asyncio.gather(*(client.run(VM_ID, "cat big") for _ in range(3)))
    assert all(r.stdout == big for r in results)


def open_streams(client: FastVM) -> int:
    protocol = client._transport._protocol
    assert protocol is not None
    return int(protocol.conn.open_outbound_streams)


async def test_an_early_answer_ends_the_upload(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        f"/v1/vms/{VM_ID}/exec",
        Reply(413, {"error": "too large", "code": "payload_too_large"}),
        early=True,
    )
    with pytest.raises(APIError) as info:
        await client.run(VM_ID, ["echo", "z" * (20 * 1024 * 1024)])
    assert info.value.status == 413
    assert stub.bytes_received < 20 * 1024 * 1024
    assert open_streams(client) == 0
    stub.route("GET", "/v1/vms", Reply(200, []))
    assert await client.list() == []


async def test_timed_out_calls_leave_no_open_streams(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=2))
    results = await asyncio.gather(
        *(client.run(VM_ID, "sleep 9", timeout=0.2) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, APITimeoutError) for r in results)
    assert open_streams(client) == 0
    await asyncio.sleep(0.1)
    assert len(stub.resets) == 50


async def test_large_request_body_flows(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire()))
    arg = "y" * (3 * 1024 * 1024)
    await client.run(VM_ID, ["echo", arg])
    assert stub.requests[-1].json["command"][1] == arg


# Snapshots --------------------------------------------------------------------------------------


async def test_snapshot_sends_vm_id_and_name(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/snapshots", Reply(201, snapshot_wire(name="before-deploy")))
    vm = VM(
        id=VM_ID,
        name="n",
        org_id="o",
        machine_name="c1m2",
        cpu=1,
        memory_mib=2048,
        disk_gib=10,
        status="running",
        created_at="t",
    )
    snap = await client.snapshot(vm, name="before-deploy")
    assert stub.requests[-1].json == {"vmId": VM_ID, "name": "before-deploy"}
    assert snap == Snapshot(
        id=SNAP_ID,
        name="before-deploy",
        org_id="org-1",
        vm_id=VM_ID,
        status="ready",
        created_at="2026-01-02T03:04:06.000Z",
        firewall=FirewallPolicy(mode="open", ingress=[]),
    )
    await client.snapshot("my-vm")
    body = stub.requests[-1].json
    assert body["vmId"] == "my-vm" and is_uuid(body["name"])


async def test_snapshot_polls_until_ready(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/snapshots", Reply(201, snapshot_wire(status="creating")))
    stub.route(
        "GET",
        f"/v1/snapshots/{SNAP_ID}",
        [Reply(200, snapshot_wire(status="creating")), Reply(200, snapshot_wire(status="ready"))],
    )
    assert (await client.snapshot(VM_ID)).status == "ready"


async def test_snapshot_error_and_timeout(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", "/v1/snapshots", Reply(201, snapshot_wire(status="creating")))
    stub.route("GET", f"/v1/snapshots/{SNAP_ID}", Reply(200, snapshot_wire(status="error")))
    with pytest.raises(SnapshotError) as err:
        await client.snapshot(VM_ID)
    assert err.value.snapshot_id == SNAP_ID
    stub.route("GET", f"/v1/snapshots/{SNAP_ID}", Reply(200, snapshot_wire(status="creating")))
    with pytest.raises(SnapshotNotReadyError) as late:
        await client.snapshot(VM_ID, timeout=0.4)
    assert isinstance(late.value, TimeoutError)


async def test_list_remove_rename_snapshots(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/snapshots", Reply(200, [snapshot_wire(), snapshot_wire(id="b")]))
    snaps = await client.list_snapshots()
    assert [s.id for s in snaps] == [SNAP_ID, "b"]
    stub.route("DELETE", f"/v1/snapshots/{SNAP_ID}", Reply(200, {"id": SNAP_ID, "deleted": True}))
    await client.remove_snapshot(snaps[0])
    assert stub.requests[-1].method == "DELETE"
    stub.route("PATCH", f"/v1/snapshots/{SNAP_ID}", Reply(200, snapshot_wire(name="v2-stable")))
    snap = await client.rename_snapshot(snaps[0], "v2-stable")
    assert stub.requests[-1].json == {"name": "v2-stable"}
    assert snap.name == "v2-stable"


# Quotas -----------------------------------------------------------------------------------------


async def test_quotas(stub: StubServer, client: FastVM) -> None:
    values = {"vcpu": 2, "memoryMiB": 4096, "diskGiB": 20, "snapshotCount": 1, "volumeCount": 0}
    stub.route(
        "GET",
        "/v1/org/quotas",
        Reply(200, {"orgId": "org-1", "limits": {**values, "vcpu": 64}, "usage": values}),
    )
    usage = await client.quotas()
    assert usage == OrgQuotaUsage(
        org_id="org-1",
        limits=OrgQuotaValues(vcpu=64, memory_mib=4096, disk_gib=20, snapshot_count=1),
        usage=OrgQuotaValues(vcpu=2, memory_mib=4096, disk_gib=20, snapshot_count=1),
    )


# Errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", BadRequestError),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (413, "payload_too_large", APIError),
        (422, None, UnprocessableEntityError),
        (429, None, RateLimitError),
        (500, "internal", InternalServerError),
        (501, "not_implemented", InternalServerError),
        (503, "unavailable", InternalServerError),
    ],
)
async def test_error_statuses_map_to_typed_exceptions(
    stub: StubServer, status: int, code: str | None, cls: type[APIError]
) -> None:
    body: dict[str, object] = {"error": f"boom {status}", "field": "name"}
    if code:
        body["code"] = code
    stub.route("GET", f"/v1/vms/{VM_ID}", Reply(status, body, {"x-should-retry": "false"}))
    async with FastVM(api_key="k", base_url=stub.url) as c:
        with pytest.raises(cls) as info:
            await c.get(VM_ID)
    err = info.value
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, f"boom {status}")
    assert err.body == body
    assert err.headers["x-should-retry"] == "false"
    assert f"boom {status}" in str(err)
    if isinstance(err, BadRequestError):
        assert err.field == "name"


async def test_quota_error_carries_the_dimension(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        "/v1/vms",
        Reply(
            429,
            {"error": "vcpu quota exceeded", "code": "quota_exceeded", "dimension": "vcpu"},
            {"x-should-retry": "false"},
        ),
    )
    with pytest.raises(QuotaExceededError) as info:
        await client.launch(machine="c8m16")
    assert info.value.dimension == "vcpu"
    assert isinstance(info.value, RateLimitError)
    assert len(stub.paths("POST")) == 1


async def test_non_json_error_body(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/vms", Reply(400, "plain text failure"))
    with pytest.raises(BadRequestError, match="plain text failure") as info:
        await client.list()
    assert info.value.code is None


async def test_errors_are_fastvm_errors() -> None:
    for cls in (APIError, APIConnectionError, VMLaunchError, SnapshotError, QuotaExceededError):
        assert issubclass(cls, FastVMError)
    for timeout_cls in (APITimeoutError, VMNotReadyError, SnapshotNotReadyError):
        assert issubclass(timeout_cls, TimeoutError) and issubclass(timeout_cls, FastVMError)


# Retries ----------------------------------------------------------------------------------------


async def test_idempotent_calls_retry_5xx(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "GET",
        "/v1/vms",
        [
            Reply(503, {"error": "starting"}, {"retry-after-ms": "10"}),
            Reply(500, {"error": "oops"}, {"retry-after-ms": "10"}),
            Reply(200, [vm_wire()]),
        ],
    )
    assert len(await client.list()) == 1
    assert stub.paths("GET").count("/v1/vms") == 3


async def test_retries_stop_at_max_retries(stub: StubServer) -> None:
    stub.route("GET", "/v1/vms", Reply(503, {"error": "down"}, {"retry-after-ms": "5"}))
    async with FastVM(api_key="k", base_url=stub.url, max_retries=1) as c:
        with pytest.raises(InternalServerError):
            await c.list()
    assert stub.paths("GET").count("/v1/vms") == 2


async def test_x_should_retry_false_is_honoured(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/vms", Reply(503, {"error": "no"}, {"x-should-retry": "false"}))
    with pytest.raises(InternalServerError):
        await client.list()
    assert stub.paths("GET").count("/v1/vms") == 1


async def test_x_should_retry_true_retries_even_a_post(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        f"/v1/vms/{VM_ID}/exec",
        [
            Reply(503, {"error": "busy"}, {"x-should-retry": "true", "retry-after-ms": "5"}),
            Reply(200, exec_wire()),
        ],
    )
    assert (await client.run(VM_ID, "true")).exit_code == 0
    assert len(stub.paths("POST")) == 2


async def test_post_errors_are_not_retried_without_permission(
    stub: StubServer, client: FastVM
) -> None:
    stub.route("POST", "/v1/vms", Reply(500, {"error": "boom"}))
    with pytest.raises(InternalServerError):
        await client.launch()
    assert len(stub.paths("POST")) == 1


async def test_retry_after_is_honoured(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "DELETE",
        f"/v1/vms/{VM_ID}",
        [Reply(429, {"error": "slow down"}, {"retry-after": "0.3"}), Reply(200, {"deleted": True})],
    )
    started = time.monotonic()
    await client.remove(VM_ID)
    assert time.monotonic() - started >= 0.3


async def test_retry_that_does_not_fit_the_timeout_is_not_attempted(stub: StubServer) -> None:
    stub.route("GET", "/v1/vms", Reply(503, {"error": "x"}, {"retry-after": "30"}))
    async with FastVM(api_key="k", base_url=stub.url, timeout=1) as c:
        with pytest.raises(InternalServerError):
            await c.list()
    assert stub.paths("GET").count("/v1/vms") == 1


async def test_refused_stream_is_sent_again_at_once(stub: StubServer, client: FastVM) -> None:
    stub.route(
        "POST",
        f"/v1/vms/{VM_ID}/exec",
        [Reply(refuse=True), Reply(200, exec_wire())],
    )
    assert (await client.run(VM_ID, "true")).exit_code == 0
    assert len(stub.paths("POST")) == 2


async def test_connection_refused(unused_tcp_port: int) -> None:
    c = FastVM(api_key="k", base_url=f"http://127.0.0.1:{unused_tcp_port}", max_retries=0)
    with pytest.raises(APIConnectionError) as info:
        await c.warmup()
    assert info.value.request_sent is False
    await c.close()


async def test_connection_refused_is_retried_then_raised(unused_tcp_port: int) -> None:
    c = FastVM(api_key="k", base_url=f"http://127.0.0.1:{unused_tcp_port}", max_retries=1)
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        await c.run("vm", "true")
    assert time.monotonic() - started >= 0.3  # one backoff (~0.5 s x [0.75, 1])
    await c.close()


# The one connection -----------------------------------------------------------------------------


async def test_concurrent_calls_share_one_connection(stub: StubServer) -> None:
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def slow_exec(req: StubRequest) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 10:
            release.set()
        await asyncio.wait_for(release.wait(), 5)
        in_flight -= 1
        return Reply(200, exec_wire(stdout=req.json["command"][2]))

    stub.route("POST", r"/v1/vms/[^/]+/exec", slow_exec)
    stub.route("POST", "/v1/vms", Reply(201, vm_wire()))
    proxy = await CountingProxy("127.0.0.1", int(stub.url.rsplit(":", 1)[1])).start()
    try:
        async with FastVM(api_key="k", base_url=f"http://127.0.0.1:{proxy.port}") as c:
            vms = await asyncio.gather(*(c.launch(name=f"b-{i}") for i in range(10)))
            results = await asyncio.gather(*(c.run(v, f"{i}") for i, v in enumerate(vms)))
        assert [r.stdout for r in results] == [str(i) for i in range(10)]
        assert peak == 10  # all ten ran at the same time
        assert proxy.connections == 1
        assert len(stub.connections) == 1
    finally:
        await proxy.close()


async def test_many_concurrent_calls_on_one_connection(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", r"/v1/vms/[^/]+", Reply(200, vm_wire(), delay=0.05))
    vms = await asyncio.gather(*(client.get(f"vm-{i}") for i in range(200)))
    assert len(vms) == 200
    assert len(stub.connections) == 1


async def test_goaway_reconnects_transparently(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/vms", Reply(200, []))
    await client.list()
    stub.goaway()
    await asyncio.sleep(0.05)
    await client.list()
    assert len(stub.connections) == 2
    stub.route("GET", "/v1/vms", [Reply(200, [], goaway_after=True), Reply(200, [])])
    await client.list()
    await client.list()
    assert len(stub.connections) == 3


async def test_in_flight_calls_finish_across_a_goaway(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=0.3))
    task = asyncio.ensure_future(client.run(VM_ID, "true"))
    await asyncio.sleep(0.1)
    stub.goaway()
    assert (await task).exit_code == 0


async def test_server_dropping_the_connection(stub: StubServer, client: FastVM) -> None:
    stub.route("GET", "/v1/vms", Reply(200, [], delay=5))
    task = asyncio.ensure_future(client.list())
    await asyncio.sleep(0.2)
    for conn in stub.connections:
        assert conn.transport is not None
        conn.transport.close()
    # The GET is idempotent: it is retried on a new connection, where it is answered.
    stub.route("GET", "/v1/vms", Reply(200, [vm_wire()]))
    assert len(await task) == 1
    assert len(stub.connections) == 2


async def test_run_is_not_resent_when_the_connection_drops(stub: StubServer, client: FastVM) -> None:
    stub.route("POST", f"/v1/vms/{VM_ID}/exec", Reply(200, exec_wire(), delay=5))
    task = asyncio.ensure_future(client.run(VM_ID, "true"))
    await asyncio.sleep(0.2)
    for conn in stub.connections:
        assert conn.transport is not None
        conn.transport.close()
    with pytest.raises(APIConnectionError) as info:
        await task
    assert info.value.request_sent is True
    assert len(stub.paths("POST")) == 1


async def test_a_client_works_across_event_loops(stub: StubServer) -> None:
    stub.route("GET", "/v1/vms", Reply(200, []))
    c = FastVM(api_key="k", base_url=stub.url)

    def in_new_loop() -> builtins.list[VM]:
        return asyncio.run(c.list())

    assert await asyncio.get_running_loop().run_in_executor(None, in_new_loop) == []
    assert await c.list() == []
    await c.close()


def test_models_serialise_like_the_wire() -> None:
    from fastvm._models import firewall_from_wire, vm_from_wire

    assert firewall_from_wire(None) is None
    vm = vm_from_wire({"id": "x", "memoryMiB": 512.0, "cpu": True, "publicIpv6": ""})
    assert (vm.id, vm.memory_mib, vm.public_ipv6, vm.status) == ("x", 512, None, "")
    assert json.dumps(vm.__dict__, default=lambda o: o.__dict__)
