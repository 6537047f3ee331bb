/**
 * `GET /v1/vms/{id}` under h2load (nghttp2's C load generator: one connection, 64 streams), so
 * that req/s is the server's and not a Node load generator's (which costs more CPU per request
 * than the server on two cores). The same run measures the floor: a bare `node:http2` server
 * answering the same body with no routing, auth, store or metrics (bench/floor-server.ts). Skipped
 * with the reason when h2load is not installed (Debian: nghttp2-client).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ApiServer } from './api.js';
import { cpuMs, sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface H2LoadResult {
  rps: number;
  serverCpuMsPerReq: number;
  requests: number;
  failed: number;
}

/** Why h2load cannot run here, or undefined. */
export function h2loadUnavailable(): string | undefined {
  const r = spawnSync('h2load', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'h2load is not installed (Debian: nghttp2-client)';
}

function h2load(url: string, requests: number, headers: Record<string, string>): Promise<string> {
  const args = ['-c1', '-m64', '-n', String(requests)];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(url);
  return new Promise((resolve, reject) =>
    execFile('h2load', args, { maxBuffer: 1 << 20 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    ),
  );
}

/** A warm-up pass, then `requests` measured: req/s by h2load, server CPU from /proc. */
export async function runH2Load(
  url: string,
  serverPid: number,
  requests: number,
  headers: Record<string, string>,
): Promise<H2LoadResult> {
  await h2load(url, Math.min(20_000, requests), headers);
  const cpu0 = cpuMs(serverPid);
  const out = await h2load(url, requests, headers);
  const cpu = cpuMs(serverPid) - cpu0;
  const rps = Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1]);
  const done = Number(
    /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded/.exec(out)?.[2],
  );
  const status2xx = Number(/status codes: (\d+) 2xx/.exec(out)?.[1]);
  if (!Number.isFinite(rps) || !Number.isFinite(done)) throw new Error(`h2load said: ${out}`);
  return { rps, serverCpuMsPerReq: cpu / requests, requests, failed: requests - status2xx };
}

/** h2load against the API server's `GET /v1/vms/{id}`. */
export function loadApiH2Load(
  srv: ApiServer,
  vmId: string,
  requests: number,
): Promise<H2LoadResult> {
  return runH2Load(`${srv.url}/v1/vms/${vmId}`, srv.child.pid!, requests, { 'x-api-key': srv.key });
}

/** h2load against a bare node:http2 server answering `body` (the floor), in a child process. */
export async function loadFloor(body: string, requests: number): Promise<H2LoadResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'floor-server.ts')], {
    env: { ...process.env, FASTVM_BENCH_BODY: body },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      readline.createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`floor server exited (${code})`)));
    });
    const { url } = JSON.parse(line) as { url: string };
    return await runH2Load(`${url}/v1/vms/x`, child.pid!, requests, {});
  } finally {
    child.kill('SIGTERM');
    await sleep(100);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
