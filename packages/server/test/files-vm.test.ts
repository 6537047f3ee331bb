/**
 * Issue 8 with real QEMU VMs: files, streaming exec, pause/resume and TTL.
 *
 * - SDK `upload`/`download` of a 50 MiB file and of a directory tree, checksums equal;
 * - CLI `fastvm cp` of the same, both ways;
 * - the official clients' flows (contract §6) when VMs have networking: upload = presign + PUT +
 *   files/fetch, download = `curl -T` from the guest to the uploadUrl + GET (file and chunked tar),
 *   and presigned URLs refused with a wrong signature, for another VM, or expired;
 * - SDK `stream()`: events arrive while the command still runs;
 * - pause/resume keeps a process's state (a counter stops while paused and goes on after; a
 *   sleep survives) and the paused QEMU uses no CPU;
 * - a VM with a 2 s TTL is paused, and another deleted, on time.
 * Transfer speeds are printed (`[speed]` lines).
 */
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { QemuRuntime } from '@fastvm/runtime';
import { FastVM } from 'fastvm';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { startServer, type ServerHandle } from '../src/index.js';
import type { ServiceContext } from '../src/services/context.js';
import { FileService } from '../src/services/files.js';
import {
  createNetworkManager,
  type HostNetworkManager,
  type NetworkSettings,
} from '../src/services/host-network.js';
import type { NetworkManager } from '../src/services/network.js';
import { TestClient, makeDataDir, sleep } from './helpers.js';

const CLI = path.resolve(import.meta.dirname, '../../cli/bin/fastvm.cjs');
const MiB = 1024 * 1024;
const TAG = crypto.randomBytes(2).toString('hex');
const NET_SKIP =
  process.getuid?.() !== 0
    ? 'needs root'
    : !fs.existsSync('/dev/net/tun')
      ? 'needs /dev/net/tun'
      : '';

const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
const fileSha = async (p: string): Promise<string> => {
  const h = crypto.createHash('sha256');
  for await (const c of fs.createReadStream(p)) h.update(c as Buffer);
  return h.digest('hex');
};
const speed = (what: string, bytes: number, ms: number): void => {
  console.log(
    `[speed] ${what}: ${(bytes / MiB).toFixed(1)} MiB in ${(ms / 1000).toFixed(2)} s = ${(bytes / MiB / (ms / 1000)).toFixed(1)} MiB/s`,
  );
};

/** `{relative path: sha256}` of every regular file below `dir`, plus directory entries. */
async function treeDigest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const rel = path.relative(dir, p);
      if (e.isDirectory()) {
        out[`${rel}/`] = 'dir';
        await walk(p);
      } else if (e.isSymbolicLink()) out[rel] = `-> ${await fsp.readlink(p)}`;
      else out[rel] = await fileSha(p);
    }
  };
  await walk(dir);
  return out;
}

function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { PATH: process.env.PATH, HOME: os.tmpdir(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

describe('files, streaming exec, pause/resume and TTL (real QEMU VMs)', () => {
  let runtime: QemuRuntime;
  let server: ServerHandle;
  let network: NetworkManager | undefined;
  let dataDir: string;
  let work: string;
  let api: TestClient;
  let sdk: FastVM;
  let vmId: string;
  let otherId: string;
  const settings: NetworkSettings = {
    enabled: true,
    bridge: `fvbf${TAG}`,
    ipv4Subnet: `10.217.${crypto.randomBytes(1)[0]!}.0/24`,
  };

  const exec = async (id: string, command: string, timeoutSec = 60) => {
    const r = await api.post(`/v1/vms/${id}/exec`, { command, timeoutSec });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body as { exitCode: number; stdout: string; stderr: string };
  };

  beforeAll(async () => {
    runtime = await testRuntime();
    dataDir = await makeDataDir();
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'fastvm-files-vm-'));
    if (!NET_SKIP) {
      network = (
        await createNetworkManager({ dataDir, logger: pino({ level: 'silent' }), settings })
      ).network;
    }
    server = await startServer({
      port: 0,
      dataDir,
      runtime,
      ...(network ? { network } : {}),
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      launchWaitMs: 60_000,
      shutdownGraceMs: 5000,
    });
    api = new TestClient(server.url, server.bootstrapKey);
    sdk = new FastVM({ apiKey: server.bootstrapKey, baseUrl: server.url });
    const [a, b] = await Promise.all([
      api.post('/v1/vms', { machineType: 'c1m2', name: 'files-vm' }),
      api.post('/v1/vms', { machineType: 'c1m2', name: 'other-vm' }),
    ]);
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    vmId = a.body.id;
    otherId = b.body.id;
    // 50 MiB of random bytes.
    const big = fs.openSync(path.join(work, 'big.bin'), 'w');
    for (let i = 0; i < 50; i++) fs.writeSync(big, crypto.randomBytes(MiB));
    fs.closeSync(big);
  }, 240_000);

  afterAll(async () => {
    await sdk?.close();
    if (server) {
      for (const vm of (await api.get('/v1/vms')).body ?? []) {
        await api.del(`/v1/vms/${(vm as { id: string }).id}`).catch(() => {});
      }
      await server.close().catch(() => {});
    }
    await (network as HostNetworkManager | undefined)?.host.shutdown().catch(() => {});
    await disposeRuntime(runtime);
    if (dataDir) await fsp.rm(dataDir, { recursive: true, force: true });
    if (work) await fsp.rm(work, { recursive: true, force: true });
  });

  it('SDK: a 50 MiB file up and down, checksums equal', async () => {
    const local = path.join(work, 'big.bin');
    const want = await fileSha(local);
    let t = performance.now();
    let last = 0;
    const up = await sdk.upload(vmId, local, '/root/big.bin', {
      onProgress: (p) => (last = p.bytes),
    });
    speed('SDK upload (exec stdin chunks)', up.bytes, performance.now() - t);
    expect(up.bytes).toBe(50 * MiB);
    expect(last).toBe(50 * MiB);
    expect((await exec(vmId, 'sha256sum /root/big.bin')).stdout.slice(0, 64)).toBe(want);
    expect((await exec(vmId, 'ls /root | grep -c fastvm || true')).stdout.trim()).toBe('0');

    t = performance.now();
    const down = await sdk.download(vmId, '/root/big.bin', path.join(work, 'big.down'));
    speed('SDK download (NDJSON exec of cat)', down.bytes, performance.now() - t);
    expect(await fileSha(path.join(work, 'big.down'))).toBe(want);
  });

  it('SDK: a directory tree up and down (contents merged into existing directories)', async () => {
    const src = path.join(work, 'tree');
    await fsp.mkdir(path.join(src, 'a/b/c'), { recursive: true });
    await fsp.mkdir(path.join(src, 'empty dir'));
    await fsp.writeFile(path.join(src, 'top.txt'), 'top\n');
    await fsp.writeFile(path.join(src, 'a/b/c/deep ü.bin'), crypto.randomBytes(3 * MiB + 5));
    await fsp.writeFile(path.join(src, 'a/empty'), '');
    for (let i = 0; i < 20; i++)
      await fsp.writeFile(path.join(src, `a/f${i}`), crypto.randomBytes(i * 100));
    await fsp.symlink('top.txt', path.join(src, 'link'));
    const want = await treeDigest(src);

    await exec(vmId, 'mkdir -p /root/tree && echo keep > /root/tree/existing');
    const up = await sdk.upload(vmId, src, '/root/tree');
    expect(up.kind).toBe('directory');
    const listing = await exec(
      vmId,
      'cd /root/tree && find . -type f ! -name existing | sort | xargs -d "\\n" sha256sum && readlink link && cat existing',
    );
    expect(listing.exitCode).toBe(0);
    const remote = Object.fromEntries(
      listing.stdout
        .trim()
        .split('\n')
        .slice(0, -2)
        .map((l) => [l.slice(66).replace(/^\.\//, ''), l.slice(0, 64)]),
    );
    const wantFiles = Object.fromEntries(
      Object.entries(want).filter(([, v]) => v !== 'dir' && !v.startsWith('->')),
    );
    expect(remote).toEqual(wantFiles);
    expect(listing.stdout.trim().split('\n').slice(-2)).toEqual(['top.txt', 'keep']);

    const dst = path.join(work, 'tree.down');
    await fsp.mkdir(dst);
    await fsp.writeFile(path.join(dst, 'mine'), 'local only');
    const down = await sdk.download(vmId, '/root/tree', dst);
    expect(down.kind).toBe('directory');
    expect(await treeDigest(dst)).toEqual({
      ...want,
      existing: sha256(Buffer.from('keep\n')),
      mine: sha256(Buffer.from('local only')),
    });
    expect((await fsp.readdir(work)).filter((f) => f.includes('.fastvm-'))).toEqual([]);
  });

  it('CLI: fastvm cp of the 50 MiB file and the tree, both ways', async () => {
    const env = { FASTVM_API_KEY: server.bootstrapKey, FASTVM_BASE_URL: server.url };
    let t = performance.now();
    const up = await cli(
      ['cp', path.join(work, 'big.bin'), 'files-vm:/root/cli.bin', '--json'],
      env,
    );
    speed('CLI cp up (incl. CLI start)', 50 * MiB, performance.now() - t);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    expect(JSON.parse(up.stdout)).toMatchObject({
      kind: 'file',
      bytes: 50 * MiB,
      destination: '/root/cli.bin',
    });
    t = performance.now();
    const down = await cli(['cp', 'files-vm:/root/cli.bin', path.join(work, 'cli.down')], env);
    speed('CLI cp down (incl. CLI start)', 50 * MiB, performance.now() - t);
    expect(down).toMatchObject({ code: 0, stderr: '' });
    expect(await fileSha(path.join(work, 'cli.down'))).toBe(
      await fileSha(path.join(work, 'big.bin')),
    );

    expect((await cli(['cp', path.join(work, 'tree'), 'files-vm:/root/cli-tree'], env)).code).toBe(
      0,
    );
    expect(
      (await cli(['cp', 'files-vm:/root/cli-tree', path.join(work, 'cli-tree')], env)).code,
    ).toBe(0);
    expect(await treeDigest(path.join(work, 'cli-tree'))).toEqual(
      await treeDigest(path.join(work, 'tree')),
    );
  });

  it.skipIf(NET_SKIP)(
    'official flows: presign + PUT + fetch; guest curl -T + GET; refusals',
    async () => {
      const presign = async (id: string, p: string) => {
        const r = await api.post(`/v1/vms/${id}/files/presign`, { path: p });
        expect(r.status).toBe(200);
        return r.body as { uploadUrl: string; downloadUrl: string; maxUploadBytes: number };
      };
      // Upload (contract §6.1): PUT from the client, then files/fetch.
      const p = await presign(vmId, '/root/official.bin');
      expect(new URL(p.uploadUrl).hostname).toBe((network as HostNetworkManager).host.ipv4Gateway);
      // 8 MiB here: the 50 MiB transfers above already measure the same paths.
      const body = crypto.randomBytes(8 * MiB);
      let t = performance.now();
      const put = await fetch(p.uploadUrl, {
        method: 'PUT',
        body,
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(put.status).toBe(200);
      speed('storage PUT from the client', body.length, performance.now() - t);
      t = performance.now();
      const fetched = await api.post(`/v1/vms/${vmId}/files/fetch`, {
        url: p.downloadUrl,
        path: '/root/official.bin',
        timeoutSec: 600,
      });
      speed('files/fetch into the guest (agent chunks)', body.length, performance.now() - t);
      expect(fetched.body).toMatchObject({ exitCode: 0, timedOut: false });
      expect((await exec(vmId, 'sha256sum /root/official.bin')).stdout.slice(0, 64)).toBe(
        sha256(body),
      );

      // Download a file (contract §6.4): the guest PUTs with curl -T, the client GETs.
      const d = await presign(vmId, '/root/official.bin');
      t = performance.now();
      const curl = await exec(
        vmId,
        `curl --fail --show-error -s -X PUT -H 'Content-Type: application/octet-stream' -T /root/official.bin '${d.uploadUrl}'`,
        120,
      );
      expect(curl.exitCode, curl.stderr).toBe(0);
      speed('guest curl -T to the storage listener', body.length, performance.now() - t);
      const got = await fetch(d.downloadUrl, { redirect: 'manual' });
      expect(got.status).toBe(200);
      expect(got.headers.get('content-encoding')).toBeNull();
      expect(sha256(Buffer.from(await got.arrayBuffer()))).toBe(sha256(body));

      // Download a directory (§6.5): tar | curl -T - (chunked) from the guest.
      const dd = await presign(vmId, '/root/tree');
      const tarUp = await exec(
        vmId,
        `tar czf - -C /root/tree . | curl --fail -sS -T - '${dd.uploadUrl}'`,
      );
      expect(tarUp.exitCode, tarUp.stderr).toBe(0);
      const tgz = Buffer.from(await (await fetch(dd.downloadUrl)).arrayBuffer());
      const extracted = path.join(work, 'official-tree');
      await fsp.mkdir(extracted);
      await new Promise<void>((resolve, reject) => {
        const tar = execFile('tar', ['-xzf', '-', '-C', extracted], (err) =>
          err ? reject(err) : resolve(),
        );
        tar.stdin!.end(tgz);
      });
      expect((await treeDigest(extracted))['a/b/c/deep ü.bin']).toBe(
        (await treeDigest(path.join(work, 'tree')))['a/b/c/deep ü.bin'],
      );

      // Refusals, from inside the guest and through files/fetch.
      const bad = d.uploadUrl.replace(/sig=(.)/, (_m, c: string) => `sig=${c === 'A' ? 'B' : 'A'}`);
      const forged = await exec(
        vmId,
        `curl -s -o /dev/null -w '%{http_code}' -T /root/tree/top.txt '${bad}'`,
      );
      expect(forged.stdout).toBe('403');
      const foreign = await api.post(`/v1/vms/${otherId}/files/fetch`, {
        url: d.downloadUrl,
        path: '/root/x',
      });
      expect(foreign.status).toBe(403);
      expect(foreign.body.error).toMatch(/another VM/);
      const signer = await FileService.create({} as ServiceContext, { dataDir });
      signer.close();
      const object = new URL(d.downloadUrl).pathname.split('/').pop()!;
      const expired = `${new URL(d.downloadUrl).origin}${signer.sign(object, Math.floor(Date.now() / 1000) - 1, 1 << 30)}`;
      expect((await exec(vmId, `curl -s -o /dev/null -w '%{http_code}' '${expired}'`)).stdout).toBe(
        '403',
      );
      const expiredFetch = await api.post(`/v1/vms/${vmId}/files/fetch`, {
        url: expired,
        path: '/root/x',
      });
      expect(expiredFetch.status).toBe(403);
      // The API port stays closed to guests; only the storage port is open.
      const apiPort = new URL(server.url).port;
      const gw = (network as HostNetworkManager).host.ipv4Gateway;
      expect(
        (
          await exec(
            vmId,
            `curl -s -m 3 -o /dev/null -w '%{http_code}' http://${gw}:${apiPort}/healthz || true`,
          )
        ).stdout,
      ).toBe('000');
    },
  );

  it('SDK stream(): NDJSON events arrive while the command still runs', async () => {
    const seen: Array<{ type: string; at: number; text?: string }> = [];
    const t0 = performance.now();
    for await (const ev of sdk.stream(vmId, 'echo start; sleep 1.5; echo end >&2; exit 4')) {
      seen.push({
        type: ev.type,
        at: performance.now() - t0,
        ...(ev.type !== 'exit' ? { text: ev.data.toString() } : {}),
      });
      if (ev.type === 'exit') expect(ev.exitCode).toBe(4);
    }
    expect(seen.map((s) => s.type)).toEqual(['stdout', 'stderr', 'exit']);
    expect(seen[0]!.text).toBe('start\n');
    // The first event came ≥ 1.2 s before the second and before the exit.
    expect(seen[1]!.at - seen[0]!.at).toBeGreaterThan(1200);
    expect(seen[2]!.at - seen[0]!.at).toBeGreaterThan(1200);
  });

  it('pause then resume keeps a process’s state; the paused VM uses no CPU and no vCPU quota', async () => {
    const start = await exec(
      otherId,
      "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' >/dev/null 2>&1 & " +
        'nohup sleep 1000 >/dev/null 2>&1 & echo $!',
    );
    const sleepPid = start.stdout.trim();
    expect(sleepPid).toMatch(/^\d+$/);
    const counter = async (): Promise<number> =>
      Number((await exec(otherId, 'cat /tmp/counter')).stdout);
    await sleep(500);
    const c0 = await counter();
    await sleep(1000);
    const perSecond = (await counter()) - c0;
    expect(perSecond).toBeGreaterThan(2);

    const before = await counter();
    const paused = await api.post(`/v1/vms/${otherId}/pause`);
    expect(paused.body.status).toBe('paused');
    expect((await api.get('/v1/org/quotas')).body.usage.vcpu).toBe(1); // only files-vm
    const pid = runtime.get(otherId)!.pid;
    const cpu0 = cpuSeconds(pid);
    await sleep(2000);
    const pausedCpu = cpuSeconds(pid) - cpu0;
    expect((await api.post(`/v1/vms/${otherId}/exec`, { command: 'true' })).status).toBe(409);
    const resumed = await api.post(`/v1/vms/${otherId}/resume`);
    expect(resumed.body.status).toBe('running');
    const after = await counter();
    // 2 s passed, but the loop advanced by less than one second's worth: it was frozen.
    expect(after - before).toBeLessThan(perSecond);
    await sleep(1000);
    expect(await counter()).toBeGreaterThan(after);
    expect((await exec(otherId, `kill -0 ${sleepPid} && echo alive`)).stdout).toBe('alive\n');
    // The guest clock was set again on resume.
    const guestNow = Number((await exec(otherId, 'date +%s')).stdout);
    expect(Math.abs(guestNow - Date.now() / 1000)).toBeLessThan(3);
    console.log(
      `[pause] QEMU CPU while paused for 2 s: ${pausedCpu.toFixed(2)} s; loop ran ${perSecond}/s`,
    );
    expect(pausedCpu).toBeLessThan(0.2);
  });

  it('a 2 s TTL pauses one VM and deletes another on time', async () => {
    const [p, d] = await Promise.all([
      api.post('/v1/vms', {
        machineType: 'c1m2',
        name: 'ttl-pause',
        ttl: { seconds: 2, action: 'pause' },
      }),
      api.post('/v1/vms', {
        machineType: 'c1m2',
        name: 'ttl-delete',
        ttl: { seconds: 2, action: 'delete' },
      }),
    ]);
    expect(p.status).toBe(201);
    expect(d.status).toBe(201);
    const when: Record<string, number> = {};
    const deadline = Date.now() + 10_000;
    while ((!when.paused || !when.deleted) && Date.now() < deadline) {
      const [a, b] = await Promise.all([
        api.get(`/v1/vms/${p.body.id}`),
        api.get(`/v1/vms/${d.body.id}`),
      ]);
      if (!when.paused && a.body.status === 'paused') when.paused = Date.now();
      if (!when.deleted && b.status === 404) when.deleted = Date.now();
      await sleep(50);
    }
    console.log(
      `[ttl] paused ${when.paused! - p.body.expiresAtMs} ms and deleted ${when.deleted! - d.body.expiresAtMs} ms after expiresAtMs`,
    );
    expect(when.paused! - p.body.expiresAtMs).toBeGreaterThanOrEqual(0);
    expect(when.paused! - p.body.expiresAtMs).toBeLessThan(1500);
    expect(when.deleted! - d.body.expiresAtMs).toBeLessThan(2500);
    expect(runtime.get(p.body.id)?.state).toBe('paused');
    expect(runtime.get(d.body.id)).toBeUndefined();
    expect((await api.get(`/v1/vms/${p.body.id}`)).body.ttlRemainingMs).toBe(2000);
  });
});
