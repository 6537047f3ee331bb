/**
 * Several hosts (issue 22, group `cluster`): what the forwarding hop costs. Two in-process
 * servers, each with its own QEMU runtime and data dir, share a scratch PostgreSQL database in
 * cluster mode. One c1m2 VM runs on one of them; a buffered exec of `true` is sent to its host
 * (`cluster_exec_direct`) and to the other host, which forwards it (`cluster_exec_forwarded`),
 * alternating, same client code (plain `fetch`, keep-alive); `cluster_exec_forward_ratio` is the
 * per-pair ratio. Also `cluster_launch_placed`: a launch asked of the host that does not get it.
 * Skipped with the reason without PostgreSQL (FASTVM_TEST_DATABASE_URL or the local socket).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createQemuRuntime, type QemuRuntime } from '@fastvm/runtime';
import { startServer, type ServerHandle } from '@fastvm/server';
import type { Recorder } from './stats.js';

export const CLUSTER_SCENARIOS = [
  'cluster_exec_direct',
  'cluster_exec_forwarded',
  'cluster_exec_forward_ratio',
  'cluster_launch_placed',
] as const;

const KEY = 'fvm_bench_cluster_key_0123456789abcdef01';

export async function benchCluster(
  rec: Recorder,
  log: (s: string) => void,
  opts: { quick: boolean },
): Promise<string | undefined> {
  const base =
    process.env.FASTVM_TEST_DATABASE_URL ?? 'postgres://root@/postgres?host=/var/run/postgresql';
  const pg = await import('pg');
  const admin = new pg.default.Client({ connectionString: base, connectionTimeoutMillis: 3000 });
  try {
    await admin.connect();
  } catch (err) {
    return `cluster: skipped, no PostgreSQL at ${base} (${(err as Error).message})`;
  }
  const name = `fastvm_bench_${crypto.randomBytes(4).toString('hex')}`;
  await admin.query(`CREATE DATABASE ${name}`);
  const m = /^(postgres(?:ql)?:\/\/[^/?]*)(\/[^?]*)?(\?.*)?$/.exec(base)!;
  const url = `${m[1]}/${name}${m[3] ?? ''}`;
  const runtimes: QemuRuntime[] = [];
  const servers: ServerHandle[] = [];
  const dirs: string[] = [];
  try {
    for (const id of ['bench-a', 'bench-b']) {
      const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvbc-'));
      dirs.push(dataDir);
      const runtime = await createQemuRuntime({ dataDir: path.join(dataDir, 'runtime'), pool: 0 });
      runtimes.push(runtime);
      servers.push(
        await startServer({
          port: 0,
          dataDir,
          runtime,
          databaseUrl: url,
          bootstrapKey: KEY,
          logLevel: 'silent',
          dashboardDir: false,
          launchWaitMs: 120_000,
          cluster: { secret: 'bench-cluster-secret-0123456789', hostId: id, goldens: ['c1m2'] },
        }),
      );
    }
    const call = async (base: string, method: string, p: string, body?: unknown) => {
      const res = await fetch(base + p, {
        method,
        headers: {
          'x-api-key': KEY,
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
      return { host: res.headers.get('x-fastvm-host'), body: JSON.parse(text) as { id: string } };
    };
    const [a, b] = servers as [ServerHandle, ServerHandle];
    const vm = await call(a.url, 'POST', '/v1/vms', { machineType: 'c1m2' });
    const owner = vm.host === 'bench-a' ? a : b;
    const other = owner === a ? b : a;
    const exec = (s: ServerHandle) =>
      call(s.url, 'POST', `/v1/vms/${vm.body.id}/exec`, { command: ['true'] });
    for (let i = 0; i < 3; i++) {
      await exec(owner);
      await exec(other);
    }
    const n = opts.quick ? 15 : 40;
    for (let i = 0; i < n; i++) {
      let t = performance.now();
      await exec(owner);
      const direct = performance.now() - t;
      t = performance.now();
      await exec(other);
      const forwarded = performance.now() - t;
      rec.add('cluster_exec_direct', 'ms', direct);
      rec.add('cluster_exec_forwarded', 'ms', forwarded);
      rec.add('cluster_exec_forward_ratio', 'ratio', forwarded / direct);
    }
    rec.note('cluster_exec_direct', 'buffered exec of `true` sent to the VM host (cluster mode)');
    rec.note(
      'cluster_exec_forwarded',
      'the same exec sent to the other host, which authenticates, looks up the owner and streams it there',
    );
    rec.note('cluster_exec_forward_ratio', 'forwarded / direct, per alternating pair');
    // Launches asked of one host: timed when placement sends them to the other.
    const launches = opts.quick ? 3 : 6;
    for (let i = 0; i < launches; i++) {
      const t = performance.now();
      const r = await call(owner.url, 'POST', '/v1/vms', { machineType: 'c1m2' });
      const ms = performance.now() - t;
      if (r.host !== (owner === a ? 'bench-a' : 'bench-b'))
        rec.add('cluster_launch_placed', 'ms', ms);
      await call(owner.url, 'DELETE', `/v1/vms/${r.body.id}`);
    }
    rec.note(
      'cluster_launch_placed',
      'POST /v1/vms placed on the other host (cold restore, pool 0)',
    );
    await call(owner.url, 'DELETE', `/v1/vms/${vm.body.id}`);
    log(`  cluster: VM on ${vm.host}, ${n} exec pairs`);
    return undefined;
  } finally {
    for (const rt of runtimes) await rt.destroyAll().catch(() => {});
    for (const s of servers) await s.close().catch(() => {});
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
    await admin.end().catch(() => {});
  }
}
