/**
 * Service proxy throughput (group `proxy`): 1 KiB responses over 32 HTTP/1.1 keep-alive
 * connections, through the proxy (`Host: bench--<vm>.proxy.localhost`) and to the same VM port
 * directly (its public IPv6, from the host), in alternating windows of the same run. The server
 * runs in a child process (`proxy-server.ts`); the backend is an asyncio server in the guest, so
 * both paths end at the same process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { now, sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface ProxyBenchServer {
  readonly proxyPort: number;
  /** Host header of the published service. */
  readonly host: string;
  /** The VM's public IPv6 and the service port (the direct path). */
  readonly address: string;
  readonly port: number;
  readonly child: ChildProcess;
  close(): Promise<void>;
}

export async function startProxyBenchServer(dataDir: string): Promise<ProxyBenchServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'proxy-server.ts')], {
    cwd: path.resolve(here, '..'),
    env: { ...process.env, FASTVM_BENCH_DIR: dataDir },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const close = async (): Promise<void> => {
    child.stdin?.end();
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(20_000)]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  try {
    const first = await new Promise<string>((resolve, reject) => {
      const rl = readline.createInterface({ input: child.stdout! });
      const timer = setTimeout(
        () => reject(new Error('proxy bench server: no VM in 300 s')),
        300_000,
      );
      rl.once('line', (line) => {
        clearTimeout(timer);
        resolve(line);
      });
      child.once('exit', (code) => reject(new Error(`proxy bench server exited (${code})`)));
    });
    const info = JSON.parse(first) as Omit<ProxyBenchServer, 'child' | 'close'>;
    return { ...info, child, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export interface Window {
  /** Completed requests per second in this window (after its warm-up second). */
  rps: number;
  /** Latency of every request completed after the warm-up, ms. */
  latencies: number[];
  errors: number;
}

/**
 * `conns` request loops on `agent`'s keep-alive sockets for `warmupS + seconds` s against
 * `connect:port` with the `Host` header `hostHeader`; the warm-up is not counted. Reuse the
 * agent across windows so that later windows need no warm-up (connections stay open).
 */
export async function loadWindow(
  target: { connect: string; port: number; hostHeader: string },
  agent: http.Agent,
  conns: number,
  seconds: number,
  warmupS = 0,
): Promise<Window> {
  const start = now();
  const measureFrom = start + warmupS * 1000;
  const end = measureFrom + seconds * 1000;
  const latencies: number[] = [];
  let errors = 0;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const t = now();
      const req = http.request(
        {
          host: target.connect,
          port: target.port,
          path: '/',
          agent,
          headers: { host: target.hostHeader },
        },
        (res) => {
          res.on('data', () => {});
          res.on('end', () => {
            if (res.statusCode !== 200) errors++;
            else if (t >= measureFrom && now() <= end) latencies.push(now() - t);
            resolve();
          });
        },
      );
      req.on('error', () => {
        errors++;
        resolve();
      });
      req.end();
    });
  const loop = async (): Promise<void> => {
    while (now() < end) await one();
  };
  await Promise.all(Array.from({ length: conns }, loop));
  return { rps: latencies.length / seconds, latencies, errors };
}

/** A keep-alive agent with `conns` sockets for `loadWindow`. */
export function loadAgent(conns: number): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: conns, maxFreeSockets: conns });
}
