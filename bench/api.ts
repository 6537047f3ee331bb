/**
 * API throughput: `GET /v1/vms/{id}` from many concurrent requests, over one HTTP/2 (h2c)
 * connection and over HTTP/1.1 keep-alive sockets. The server runs in a child process
 * (api-server.ts, FakeRuntime) so that it does not share an event loop with the load generator.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { FastVM } from 'fastvm';
import { cpuMs, now, sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface ApiServer {
  readonly url: string;
  readonly key: string;
  readonly child: ChildProcess;
  close(): Promise<void>;
}

export async function startApiServer(dataDir: string): Promise<ApiServer> {
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'api-server.ts')], {
    cwd: path.resolve(here, '..'),
    env: { ...process.env, FASTVM_BENCH_KEY: key, FASTVM_BENCH_DIR: dataDir },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const first = await new Promise<string>((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stdout! });
    const timer = setTimeout(() => reject(new Error('API server did not start in 60 s')), 60_000);
    rl.once('line', (line) => {
      clearTimeout(timer);
      resolve(line);
    });
    child.once('exit', (code) => reject(new Error(`API server exited (${code})`)));
  });
  const { url } = JSON.parse(first) as { url: string };
  return {
    url,
    key,
    child,
    async close() {
      child.stdin?.end();
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Launch one (fake) VM through the SDK and return its id. */
export async function createVm(server: ApiServer): Promise<string> {
  const client = new FastVM({ apiKey: server.key, baseUrl: server.url });
  try {
    const vm = await client.launch({ machine: 'c1m2' });
    return vm.id;
  } finally {
    await client.close();
  }
}

/**
 * Round trips of `client.run(vm, "true")` and `client.get(vm)` on one h2c session, alternating,
 * after 20 unmeasured pairs (the JIT and the server's caches warm up).
 */
export async function sdkRoundTrips(
  server: ApiServer,
  vmId: string,
  samples: number,
): Promise<{ run: number[]; get: number[]; sessions: number }> {
  const client = new FastVM({ apiKey: server.key, baseUrl: server.url, maxRetries: 0 });
  try {
    await client.warmup();
    const timed = async (fn: () => Promise<unknown>): Promise<number> => {
      const t = now();
      await fn();
      return now() - t;
    };
    const run: number[] = [];
    const get: number[] = [];
    for (let i = 0; i < samples + 20; i++) {
      const r = await timed(async () => {
        const res = await client.run(vmId, 'true');
        if (res.exitCode !== 0) throw new Error(`run(vm, "true") exited ${res.exitCode}`);
      });
      const g = await timed(() => client.get(vmId));
      if (i >= 20) {
        run.push(r);
        get.push(g);
      }
    }
    return { run, get, sessions: client.stats.sessionsOpened };
  } finally {
    await client.close();
  }
}

export interface LoadResult {
  /** Completed requests per one-second window (warm-up excluded). */
  perSecond: number[];
  total: number;
  errors: number;
  seconds: number;
  /** CPU time the server process spent per request, in ms (over the whole run, warm-up too). */
  serverCpuMsPerReq: number;
  /** CPU time the load generator (this process) spent per request, in ms. */
  clientCpuMsPerReq: number;
}

/**
 * Run `concurrency` request loops for `warmupS + seconds`; count completions per second after
 * the warm-up. `issue` performs one request and resolves with its status code.
 */
async function drive(
  serverPid: number | undefined,
  concurrency: number,
  seconds: number,
  warmupS: number,
  issue: () => Promise<number>,
): Promise<LoadResult> {
  const serverCpu0 = cpuMs(serverPid);
  const clientCpu0 = process.cpuUsage();
  let requests = 0;
  const start = now();
  const measureFrom = start + warmupS * 1000;
  const end = measureFrom + seconds * 1000;
  const buckets = new Array<number>(seconds).fill(0);
  let errors = 0;
  const loop = async () => {
    while (now() < end) {
      let status = 0;
      try {
        status = await issue();
      } catch {
        status = 0;
      }
      const t = now();
      requests++;
      if (status !== 200) {
        errors++;
        if (status === 0) await sleep(5);
        continue;
      }
      if (t >= measureFrom && t < end) buckets[Math.floor((t - measureFrom) / 1000)]!++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const total = buckets.reduce((a, b) => a + b, 0);
  const client = process.cpuUsage(clientCpu0);
  return {
    perSecond: buckets,
    total,
    errors,
    seconds,
    serverCpuMsPerReq: (cpuMs(serverPid) - serverCpu0) / Math.max(requests, 1),
    clientCpuMsPerReq: (client.user + client.system) / 1000 / Math.max(requests, 1),
  };
}

export async function loadH2(
  server: ApiServer,
  vmId: string,
  concurrency: number,
  seconds: number,
): Promise<LoadResult & { sessions: number }> {
  let sessions = 0;
  const session = http2.connect(server.url);
  sessions++;
  session.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve());
    session.once('error', reject);
  });
  const reqPath = `/v1/vms/${encodeURIComponent(vmId)}`;
  const issue = () =>
    new Promise<number>((resolve, reject) => {
      const req = session.request({
        ':method': 'GET',
        ':path': reqPath,
        'x-api-key': server.key,
        accept: 'application/json',
      });
      let status = 0;
      req.on('response', (h) => {
        status = Number(h[':status']);
      });
      req.on('data', () => {});
      req.on('end', () => resolve(status));
      req.on('error', reject);
      req.end();
    });
  try {
    const r = await drive(server.child.pid, concurrency, seconds, 1, issue);
    return { ...r, sessions };
  } finally {
    session.close();
  }
}

export async function loadH1(
  server: ApiServer,
  vmId: string,
  concurrency: number,
  seconds: number,
): Promise<LoadResult & { sessions: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let sessions = 0;
  const u = new URL(server.url);
  const reqPath = `/v1/vms/${encodeURIComponent(vmId)}`;
  const issue = () =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(
        {
          host: u.hostname,
          port: u.port,
          path: reqPath,
          method: 'GET',
          agent,
          headers: { 'x-api-key': server.key, accept: 'application/json' },
        },
        (res) => {
          res.on('data', () => {});
          res.on('end', () => resolve(res.statusCode ?? 0));
          res.on('error', reject);
        },
      );
      req.on('socket', (s) => {
        if (!(s as { fvCounted?: boolean }).fvCounted) {
          (s as { fvCounted?: boolean }).fvCounted = true;
          sessions++;
        }
      });
      req.on('error', reject);
      req.end();
    });
  try {
    const r = await drive(server.child.pid, concurrency, seconds, 1, issue);
    return { ...r, sessions };
  } finally {
    agent.destroy();
  }
}
