/**
 * Host admission's cost per launch as the host fills: `launch()` through the SDK against an
 * in-process server with the FakeRuntime and host admission on, with no other VM on the host
 * (`api_launch_host0`) and with 400 live VMs of another org (`api_launch_host400`, rows inserted
 * straight into the store). Each launched VM is removed before the next. The ratio of the two is
 * what admitting against a full host adds (it summed every VM row once: 13 ms at 400 VMs).
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startServer } from '@fastvm/server';
import { FakeRuntime, vmRecord } from '@fastvm/server/testing';
import { FastVM } from 'fastvm';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

/** Room for 400 c1m2 on paper whatever the machine (the real MemAvailable check still runs). */
const HOST = { hostCpus: 64, cpuOvercommit: 64, memoryOvercommit: 64 };
export const ADMISSION_FILL = 400;

export async function benchAdmission(rec: Recorder, dir: string, launches: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const server = await startServer({
    dataDir: path.join(dir, 'srv'),
    runtime: new FakeRuntime(),
    port: 0,
    logLevel: 'silent',
    shutdownGraceMs: 2000,
    hostCapacity: HOST,
  });
  const client = new FastVM({ apiKey: server.bootstrapKey, baseUrl: server.url, maxRetries: 0 });
  try {
    await client.warmup();
    const other = randomUUID();
    await server.store.createOrg({
      id: other,
      name: `bench-fill-${other.slice(0, 8)}`,
      createdAt: new Date().toISOString(),
    });
    for (const [fill, name] of [
      [0, 'api_launch_host0'],
      [ADMISSION_FILL, `api_launch_host${ADMISSION_FILL}`],
    ] as const) {
      await insertVms(server.store, other, fill);
      for (let i = 0; i < 5; i++) await client.remove(await client.launch({ machine: 'c1m2' }));
      for (let i = 0; i < launches; i++) {
        const t0 = now();
        const vm = await client.launch({ machine: 'c1m2' });
        rec.add(name, 'ms', now() - t0);
        await client.remove(vm);
      }
    }
    rec.note(
      'api_launch_host0',
      'SDK launch() → in-process server (FakeRuntime, host admission on), no other VM on the host; each VM removed before the next',
    );
    rec.note(
      `api_launch_host${ADMISSION_FILL}`,
      `the same with ${ADMISSION_FILL} live VMs of another org on the host (admission sums them)`,
    );
  } finally {
    await client.close();
    await server.close();
  }
}

/** `count` VM rows of `orgId` in `provisioning` (they hold memory and vCPUs), straight into the store. */
async function insertVms(
  store: Awaited<ReturnType<typeof startServer>>['store'],
  orgId: string,
  count: number,
): Promise<void> {
  await store.withOrgLock(orgId, async (tx) => {
    for (let i = 0; i < count; i++) {
      await tx.insertVm(
        vmRecord({
          orgId,
          name: `fill-${i}`,
          metadata: { team: 'bench' },
          envVars: { BENCH: '1' },
        }),
      );
    }
  });
}
