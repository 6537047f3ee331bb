"""Every Python code block of the seed document (docs of the original FastVM Python SDK),
copied verbatim, in the seed's order. test_seed_blocks.py checks them against the seed when it
is available; test_vm.py runs each of them unchanged against a real server with real VMs."""

from __future__ import annotations

QUICK_START = '''import asyncio
from fastvm import FastVM

async def main():
    async with FastVM() as client:
        vm = await client.launch(machine="c1m2")
        snapshot = await client.snapshot(vm, name="my-snap")
        restored = await client.restore(snapshot)
        result = await client.run(restored, "echo hello")
        print(result.stdout)  # hello

asyncio.run(main())'''

CONFIGURATION = '''client = FastVM(api_key="your-key", base_url="https://api.fastvm.org")'''

CONTEXT_MANAGER = '''async with FastVM() as client:
    # warmup() called on entry, close() on exit
    ...'''

LAUNCH = '''vm = await client.launch(machine="c2m4", name="my-vm", disk_gib=20)'''

RESTORE = '''restored = await client.restore(snapshot, name="worker-01")'''

RENAME = '''vm = await client.rename(vm, "new-name")'''

SET_FIREWALL = '''vm = await client.set_firewall(vm, FirewallPolicy(mode="open"))'''

PATCH_FIREWALL = '''vm = await client.patch_firewall(vm, PatchFirewallPolicy(mode="restricted"))'''

RUN = '''result = await client.run(vm, "python3 --version")
print(result.stdout)       # Python 3.11.4
print(result.exit_code)    # 0
print(result.duration_ms)  # 42'''

NOHUP = '''# Start a long-running training job in the background
await client.run(vm, "nohup python3 train.py > /tmp/train.log 2>&1 &")

# Check on it later
result = await client.run(vm, "tail -20 /tmp/train.log")
print(result.stdout)'''

TMUX = '''# Start a tmux session with the long-running task
await client.run(vm, "tmux new-session -d -s train 'python3 train.py'")

# Capture output later
result = await client.run(vm, "tmux capture-pane -t train -p")
print(result.stdout)'''

SNAPSHOT = '''snap = await client.snapshot(vm, name="before-deploy")'''

RENAME_SNAPSHOT = '''snap = await client.rename_snapshot(snap, "v2-stable")'''

FIREWALL = '''from fastvm import FastVM, FirewallPolicy, FirewallRule

async with FastVM() as client:
    policy = FirewallPolicy(
        mode="restricted",
        ingress=[
            FirewallRule(protocol="tcp", port_start=22, description="SSH"),
            FirewallRule(protocol="tcp", port_start=8080, description="HTTP"),
        ],
    )
    vm = await client.launch(firewall=policy)'''

QUOTAS = '''usage = await client.quotas()
print(f"vCPUs: {usage.usage.vcpu} / {usage.limits.vcpu}")'''

BRANCHING = '''# Create a branching point
snap = await client.snapshot(base_vm, name="branch-point")

# Fork into 10 parallel paths
branches = await asyncio.gather(*(
    client.restore(snap, name=f"branch-{i}")
    for i in range(10)
))

# Run different strategies in parallel
results = await asyncio.gather(*(
    client.run(branch, f"python3 solve.py --seed={i}")
    for i, branch in enumerate(branches)
))

# Pick the winner
best = min(results, key=lambda r: r.duration_ms)'''

ALL = [
    QUICK_START,
    CONFIGURATION,
    CONTEXT_MANAGER,
    LAUNCH,
    RESTORE,
    RENAME,
    SET_FIREWALL,
    PATCH_FIREWALL,
    RUN,
    NOHUP,
    TMUX,
    SNAPSHOT,
    RENAME_SNAPSHOT,
    FIREWALL,
    QUOTAS,
    BRANCHING,
]
