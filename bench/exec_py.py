"""exec_py: `await client.run(vm, "true")` through the Python SDK (packages/python), timed here.

Driven by bench/exec-py.ts over stdin/stdout, one JSON object per line: it prints
{"ready": true, "protocol": ...} once warmed up, then answers each {"n": k} with
{"ms": [k durations], "connections": ...} (k sequential runs). Settings come from
FASTVM_API_KEY, FASTVM_BASE_URL and FASTVM_BENCH_VM (the VM's id).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from fastvm import FastVM


async def main() -> None:
    vm = os.environ["FASTVM_BENCH_VM"]
    loop = asyncio.get_running_loop()
    async with FastVM(max_retries=0) as client:
        transport = client._transport
        print(json.dumps({"ready": True, "protocol": transport.negotiated}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            n = int(json.loads(line)["n"])
            durations = []
            for _ in range(n):
                started = time.perf_counter()
                result = await client.run(vm, "true")
                durations.append((time.perf_counter() - started) * 1000)
                if result.exit_code != 0:
                    raise SystemExit(f"run(vm, 'true') exited {result.exit_code}")
            reply = {"ms": durations, "connections": transport.connections_opened}
            print(json.dumps(reply), flush=True)


asyncio.run(main())
