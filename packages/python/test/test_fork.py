"""fork and lineage (issue 18, additions beyond the seed) against the real server with the
FakeRuntime: N running VMs in one call, all-or-nothing quota, lineage links and tree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import NodeServer, node_available

from fastvm import FastVM, FastVMError, NotFoundError, QuotaExceededError


@pytest.fixture(scope="module")
def fake_server() -> Iterator[NodeServer]:
    if not node_available():
        pytest.skip("node and the repository's node_modules are needed for the real server")
    server = NodeServer(fake_runtime=True)
    try:
        yield server
    finally:
        server.stop()


async def test_fork_and_lineage(fake_server: NodeServer) -> None:
    async with FastVM(api_key=fake_server.key, base_url=fake_server.url) as client:
        base = await client.launch(name="py-base")
        assert base.source_snapshot_id is None
        snap = await client.snapshot(base, name="py-point")
        assert snap.parent_snapshot_id is None

        vms = await client.fork(snap, 3, name_prefix="py")
        assert [(v.name, v.status, v.source_snapshot_id) for v in vms] == [
            ("py-1", "running", snap.id),
            ("py-2", "running", snap.id),
            ("py-3", "running", snap.id),
        ]
        outs = [(await client.run(v, "hostname")).stdout.strip() for v in vms]
        assert outs == ["py-1", "py-2", "py-3"]
        by_name = await client.fork("py-point", 1)
        assert [v.name for v in by_name] == ["py-point-1"]

        child = await client.snapshot(vms[0], name="py-child")
        assert child.parent_snapshot_id == snap.id
        listed = {s.id: s for s in await client.list_snapshots()}
        assert set(listed[snap.id].digests) == {"memory", "disk", "state"}
        assert listed[snap.id].digests["memory"].startswith("sha256:")

        lineage = await client.lineage(snap)
        assert [(n.type, n.name) for n in lineage.ancestors] == [
            ("vm", "py-base"),
            ("snapshot", "py-point"),
        ]
        assert [n.name for n in lineage.descendants] == ["py-1", "py-2", "py-3", "py-point-1"]
        assert [c.name for c in lineage.descendants[0].children] == ["py-child"]
        assert lineage.truncated is False

        await client.remove(vms[0])
        again = await client.lineage(child)
        assert [(n.id, n.deleted) for n in again.ancestors] == [
            (base.id, False),
            (snap.id, False),
            (vms[0].id, True),
            (child.id, False),
        ]


async def test_fork_all_or_nothing_quota_and_errors(fake_server: NodeServer) -> None:
    async with FastVM(api_key=fake_server.key, base_url=fake_server.url) as client:
        vm = await client.launch(name="py-q")
        snap = await client.snapshot(vm, name="py-q-snap")
        before = len(await client.list())
        with pytest.raises(QuotaExceededError) as info:
            await client.fork(snap, 100)
        body = info.value.body
        assert isinstance(body, dict)
        assert body["dimension"] == "vcpu"
        assert body["count"] == 100
        assert isinstance(body["fits"], int) and body["fits"] < 100
        assert len(await client.list()) == before
        with pytest.raises(NotFoundError):
            await client.fork("no-such-snapshot", 1)
        with pytest.raises(FastVMError):
            await client.fork(snap, 0)
