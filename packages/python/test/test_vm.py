"""Every code block of the seed, unchanged, against a real FastVM server with real VMs (QEMU).

The server is ``main.ts serve`` with the real runtime on a fresh data dir (networking off); the
blocks run with ``FASTVM_API_KEY`` / ``FASTVM_BASE_URL`` pointing at it, as a user's would.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import seed_blocks
from helpers import CountingProxy, NodeServer

from fastvm import (
    VM,
    CommandResult,
    FastVM,
    FirewallPolicy,
    FirewallRule,
    NotFoundError,
    PatchFirewallPolicy,
    Snapshot,
)

pytestmark = pytest.mark.vm

TRAIN_PY = '''"""A stand-in training job: one line per step, for about ten seconds."""
import time

for step in range(1, 21):
    print(f"step {step}/20 loss={1.0 / step:.4f}", flush=True)
    time.sleep(0.5)
print("training done", flush=True)
'''

SOLVE_PY = '''"""A toy search: each --seed is a different strategy for finding the target in problem.txt."""
import argparse
import random

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
args = parser.parse_args()

with open("problem.txt") as f:
    target = int(f.read())
rng = random.Random(args.seed)
guesses = 1
while rng.randrange(1000) != target:
    guesses += 1
print(f"seed={args.seed} target={target} guesses={guesses}")
'''


async def run_block(block: str, ns: dict[str, Any]) -> None:
    """Runs a seed code block as written (top-level ``await`` and ``async with`` included)."""
    code = compile(block, "<seed>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, ns)
    if result is not None:
        await result


async def write_file(client: FastVM, vm: VM, path: str, content: str) -> None:
    r = await client.run(vm, f"cat > {path} <<'FASTVM_EOF'\n{content}FASTVM_EOF\n")
    assert (r.exit_code, r.stderr) == (0, ""), r


async def wait_for_output(
    client: FastVM, vm: VM, command: str, pattern: str, timeout: float = 90
) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = (await client.run(vm, command)).stdout
        if re.search(pattern, last):
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{command!r} never printed {pattern!r}; last output:\n{last}")


@pytest.fixture
def server_env(vm_server: NodeServer, monkeypatch: pytest.MonkeyPatch) -> NodeServer:
    monkeypatch.setenv("FASTVM_API_KEY", vm_server.key)
    monkeypatch.setenv("FASTVM_BASE_URL", vm_server.url)
    return vm_server


@pytest.fixture
async def client(server_env: NodeServer) -> AsyncIterator[FastVM]:
    """A client for the test; afterwards every VM and snapshot of the org is deleted."""
    async with FastVM() as c:
        try:
            yield c
        finally:
            for vm in await c.list():
                await c.remove(vm)
            for snap in await c.list_snapshots():
                await c.remove_snapshot(snap)
            assert await c.list() == []


async def test_quick_start(server_env: NodeServer, client: FastVM) -> None:
    """The Quick Start program, run as its own Python process."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", seed_blocks.QUICK_START],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n\n"
    vms = await client.list()
    assert len(vms) == 2 and all(v.status == "running" for v in vms)
    assert {v.source_name for v in vms} == {"", "my-snap"}
    assert [s.name for s in await client.list_snapshots()] == ["my-snap"]


async def test_context_manager_opens_one_connection(
    server_env: NodeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await CountingProxy(server_env.host, server_env.port).start()
    monkeypatch.setenv("FASTVM_BASE_URL", f"http://127.0.0.1:{proxy.port}")
    try:
        ns: dict[str, Any] = {"FastVM": FastVM}
        await run_block(seed_blocks.CONTEXT_MANAGER, ns)
        assert proxy.connections == 1  # warmup() connected on entry
        assert isinstance(ns["client"], FastVM)
    finally:
        await proxy.close()


async def test_vm_and_snapshot_examples(client: FastVM, capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict[str, Any] = {
        "client": client,
        "FirewallPolicy": FirewallPolicy,
        "PatchFirewallPolicy": PatchFirewallPolicy,
    }

    await run_block(seed_blocks.LAUNCH, ns)
    vm: VM = ns["vm"]
    assert (vm.status, vm.name, vm.machine_name) == ("running", "my-vm", "c2m4")
    assert (vm.cpu, vm.memory_mib, vm.disk_gib) == (2, 4096, 20)
    df = await client.run(vm, ["df", "-BG", "--output=size", "/"])
    assert int(df.stdout.split()[-1].rstrip("G")) >= 19, df.stdout  # the guest sees the disk
    assert (await client.run(vm, "nproc")).stdout == "2\n"

    await run_block(seed_blocks.RUN, ns)
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Python 3\.\d+\.\d+", out[0]) and out[1] == "" and out[2] == "0"
    assert int(out[3]) >= 0
    result: CommandResult = ns["result"]
    assert result.exit_code == 0 and not result.timed_out

    await run_block(seed_blocks.RENAME, ns)
    assert ns["vm"].name == "new-name" and ns["vm"].id == vm.id
    assert (await client.get("new-name")).id == vm.id

    await run_block(seed_blocks.SET_FIREWALL, ns)
    assert ns["vm"].firewall == FirewallPolicy(mode="open", ingress=[])
    await run_block(seed_blocks.PATCH_FIREWALL, ns)
    assert ns["vm"].firewall == FirewallPolicy(mode="restricted", ingress=[])
    assert (await client.get(vm)).firewall == FirewallPolicy(mode="restricted", ingress=[])

    await client.run(vm, "echo deployed-v1 > /root/state")
    await run_block(seed_blocks.SNAPSHOT, ns)
    snap: Snapshot = ns["snap"]
    assert (snap.status, snap.name, snap.vm_id) == ("ready", "before-deploy", vm.id)
    await run_block(seed_blocks.RENAME_SNAPSHOT, ns)
    assert ns["snap"].name == "v2-stable" and ns["snap"].id == snap.id
    assert [s.name for s in await client.list_snapshots()] == ["v2-stable"]

    ns["snapshot"] = ns["snap"]
    await run_block(seed_blocks.RESTORE, ns)
    restored: VM = ns["restored"]
    assert (restored.status, restored.name, restored.source_name) == (
        "running",
        "worker-01",
        "v2-stable",
    )
    assert (restored.machine_name, restored.disk_gib) == ("c2m4", 20)
    assert (await client.run(restored, "cat /root/state")).stdout == "deployed-v1\n"
    assert restored.firewall == FirewallPolicy(mode="restricted", ingress=[])

    await run_block(seed_blocks.QUOTAS, ns)
    assert capsys.readouterr().out == "vCPUs: 4 / 64\n"
    assert ns["usage"].usage.snapshot_count == 1 and ns["usage"].usage.memory_mib == 8192

    assert {v.name for v in await client.list()} == {"new-name", "worker-01"}
    await client.remove(restored)
    with pytest.raises(NotFoundError):
        await client.get(restored.id)
    await client.remove_snapshot(ns["snap"])
    assert await client.list_snapshots() == []


async def test_firewall_example(server_env: NodeServer, client: FastVM) -> None:
    ns: dict[str, Any] = {}
    await run_block(seed_blocks.FIREWALL, ns)
    vm: VM = ns["vm"]
    assert vm.status == "running"
    assert vm.firewall == FirewallPolicy(
        mode="restricted",
        ingress=[
            FirewallRule(protocol="tcp", port_start=22, description="SSH"),
            FirewallRule(protocol="tcp", port_start=8080, description="HTTP"),
        ],
    )
    assert (await client.get(vm.id)).firewall == vm.firewall


async def test_long_running_tasks_with_nohup_and_tmux(
    client: FastVM, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = await client.launch()
    await write_file(client, vm, "train.py", TRAIN_PY)
    ns: dict[str, Any] = {"client": client, "vm": vm}

    started = time.monotonic()
    await run_block(seed_blocks.NOHUP, ns)
    assert time.monotonic() - started < 9, "run() waited for the background job"
    capsys.readouterr()
    # The job outlived the request that started it and keeps writing its log.
    log = await wait_for_output(client, vm, "tail -20 /tmp/train.log", r"training done")
    assert "step 20/20" in log

    await run_block(seed_blocks.TMUX, ns)
    printed = capsys.readouterr().out
    assert ns["result"].exit_code == 0, printed
    pane = await wait_for_output(client, vm, "tmux capture-pane -t train -p", r"step 3/20")
    assert "step 1/20 loss=1.0000" in pane
    assert "train" in (await client.run(vm, "tmux ls")).stdout
    await client.run(vm, "tmux kill-session -t train")


async def test_branching_on_one_connection(server_env: NodeServer) -> None:
    proxy = await CountingProxy(server_env.host, server_env.port).start()
    try:
        async with FastVM(base_url=f"http://127.0.0.1:{proxy.port}") as client:
            try:
                base_vm = await client.launch(name="base")
                await write_file(client, base_vm, "solve.py", SOLVE_PY)
                await client.run(base_vm, "echo 417 > problem.txt")
                ns: dict[str, Any] = {"client": client, "base_vm": base_vm, "asyncio": asyncio}

                await run_block(seed_blocks.BRANCHING, ns)

                branches: list[VM] = ns["branches"]
                results: list[CommandResult] = ns["results"]
                assert [b.name for b in branches] == [f"branch-{i}" for i in range(10)]
                assert all(b.status == "running" and b.source_name == "branch-point" for b in branches)
                assert len({b.id for b in branches}) == 10
                for i, r in enumerate(results):
                    assert r.exit_code == 0, r.stderr
                    assert re.fullmatch(rf"seed={i} target=417 guesses=\d+\n", r.stdout), r.stdout
                assert ns["best"] in results
                assert ns["best"].duration_ms == min(r.duration_ms for r in results)
                assert ns["snap"].status == "ready"
            finally:
                for vm in await client.list():
                    await client.remove(vm)
                for snap in await client.list_snapshots():
                    await client.remove_snapshot(snap)
        # Launch, file writes, snapshot, 10 concurrent restores, 10 concurrent runs, cleanup:
        # all on the one connection warmup() opened.
        assert proxy.connections == 1
    finally:
        await proxy.close()
