/**
 * `GET /v1/vms/{id}` under h2load (nghttp2's C load generator), so that req/s is the server's and
 * not a Node load generator's (which costs more CPU per request than the server on two cores):
 * HTTP/2 on one connection with 64 streams, HTTP/1.1 (`--h1`) on 64 keep-alive connections. The
 * same run measures the floor: a bare `node:http2` / `node:http` server answering the same body
 * with no routing, auth, store or metrics (bench/floor-server.ts). Skipped with the reason when
 * h2load is not installed (Debian: nghttp2-client).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ApiServer } from './api.js';
import { cpuMs, sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export type Protocol = 'h2' | 'h1';

/** One measured round. */
export interface H2LoadResult {
  rps: number;
  serverCpuMsPerReq: number;
  requests: number;
  failed: number;
}

/** Measured rounds after one warm-up round. */
const ROUNDS = 3;

/** Why h2load cannot run here, or undefined. */
export function h2loadUnavailable(): string | undefined {
  const r = spawnSync('h2load', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'h2load is not installed (Debian: nghttp2-client)';
}

function h2load(
  protocol: Protocol,
  url: string,
  requests: number,
  headers: Record<string, string>,
): Promise<string> {
  const args = protocol === 'h2' ? ['-c1', '-m64'] : ['--h1', '-c64', '-m1'];
  args.push('-n', String(requests));
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(url);
  return new Promise((resolve, reject) =>
    execFile('h2load', args, { maxBuffer: 1 << 20 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    ),
  );
}

/** A warm-up pass, then `ROUNDS` of `requests` measured: req/s by h2load, server CPU from /proc. */
export async function runH2Load(
  protocol: Protocol,
  url: string,
  serverPid: number,
  requests: number,
  headers: Record<string, string>,
): Promise<H2LoadResult[]> {
  await h2load(protocol, url, Math.min(20_000, requests), headers);
  const rounds: H2LoadResult[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const cpu0 = cpuMs(serverPid);
    const out = await h2load(protocol, url, requests, headers);
    const cpu = cpuMs(serverPid) - cpu0;
    const rps = Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1]);
    const done = Number(
      /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded/.exec(out)?.[2],
    );
    const status2xx = Number(/status codes: (\d+) 2xx/.exec(out)?.[1]);
    if (!Number.isFinite(rps) || !Number.isFinite(done)) throw new Error(`h2load said: ${out}`);
    rounds.push({ rps, serverCpuMsPerReq: cpu / requests, requests, failed: requests - status2xx });
  }
  return rounds;
}

/** h2load against the API server's `GET /v1/vms/{id}`. */
export function loadApiH2Load(
  protocol: Protocol,
  srv: ApiServer,
  vmId: string,
  requests: number,
): Promise<H2LoadResult[]> {
  return runH2Load(protocol, `${srv.url}/v1/vms/${vmId}`, srv.child.pid!, requests, {
    'x-api-key': srv.key,
  });
}

/** h2load against a bare Node server answering `body` (the floor), in a child process. */
export async function loadFloor(
  protocol: Protocol,
  body: string,
  requests: number,
): Promise<H2LoadResult[]> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'floor-server.ts')], {
    env: { ...process.env, FASTVM_BENCH_BODY: body, FASTVM_BENCH_PROTO: protocol },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      readline.createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`floor server exited (${code})`)));
    });
    const { url } = JSON.parse(line) as { url: string };
    return await runH2Load(protocol, `${url}/v1/vms/x`, child.pid!, requests, {});
  } finally {
    child.kill('SIGTERM');
    await sleep(100);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
