/**
 * `fork_10_api` (issue 18): one `POST /v1/snapshots/{id}/fork` with `count: 10` through the SDK,
 * until all ten forks answered `true` through the SDK too. The API-level counterpart of
 * `fanout_10_all` (ten `restore()` calls on the runtime, each then `true` through the agent),
 * measured in the same run, interleaved with it: the difference is what the server adds (rows,
 * quota, ten boots tracked, HTTP/2, exec through the API).
 * @module
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { createQemuRuntime, type QemuRuntime } from '@fastvm/runtime';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FastVM } from 'fastvm';

/** A server on its own runtime with one ready snapshot to fork. */
export interface ForkApiBench {
  readonly runtime: QemuRuntime;
  readonly server: ServerHandle;
  /** One fork of `n` and the `true` in each; the forks are deleted afterwards (not timed). */
  run(n: number): Promise<{ allMs: number; callMs: number }>;
  close(): Promise<void>;
}

/**
 * Starts the server under `root`, launches a c1m2 VM, runs `true` in it, snapshots it through
 * the API and deletes it, then waits for the snapshot's flatten and digests (so that neither
 * competes with the forks for the CPU, and restores find the layers verified).
 */
export async function startForkApiBench(
  root: string,
  runtimeLog: (msg: string) => void,
): Promise<ForkApiBench> {
  const runtime = await createQemuRuntime({ dataDir: path.join(root, 'fork-rt'), log: runtimeLog });
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  const server = await startServer({
    dataDir: path.join(root, 'fork-srv'),
    runtime,
    bootstrapKey: key,
    port: 0,
    logLevel: 'silent',
    shutdownGraceMs: 2000,
  });
  const client = new FastVM({ apiKey: key, baseUrl: server.url, maxRetries: 0, timeout: 300_000 });
  const base = await client.launch({ machine: 'c1m2', name: 'fork-base' });
  await client.run(base, 'true');
  const snap = await client.snapshot(base, { name: 'fork-point' });
  await client.remove(base);
  await runtime.digestsSettled(snap.id);

  return {
    runtime,
    server,
    async run(n) {
      const t0 = performance.now();
      const vms = await client.fork(snap, n, { namePrefix: 'f' });
      const callMs = performance.now() - t0;
      await Promise.all(
        vms.map(async (vm) => {
          const r = await client.run(vm, 'true');
          if (r.exitCode !== 0) throw new Error(`true in ${vm.name} exited ${r.exitCode}`);
        }),
      );
      const allMs = performance.now() - t0;
      await Promise.all(vms.map((vm) => client.remove(vm)));
      return { allMs, callMs };
    },
    async close() {
      await client.close();
      await server.close();
      await runtime.destroyAll();
    },
  };
}
