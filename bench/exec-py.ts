/**
 * exec_py: the Python SDK's `await client.run(vm, "true")`, measured in a Python child process
 * (bench/exec_py.py) on the same server and VM as exec_sdk, in blocks interleaved with it.
 * The Python environment is packages/python/.venv (set up by packages/python/scripts/setup.sh).
 */
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');

export interface PyExec {
  /** What the Python client negotiated (`h2c` for the bench's server). */
  readonly protocol: string;
  /** TCP connections the Python client opened so far. */
  connections: number;
  /** `n` sequential `run(vm, "true")` calls; their durations in ms. */
  run(n: number): Promise<number[]>;
  close(): Promise<void>;
}

/** Sets up the Python environment (if needed), starts the runner and waits until it is warm. */
export async function startPyExec(baseUrl: string, apiKey: string, vmId: string): Promise<PyExec> {
  const setup = spawnSync('bash', [path.join(repo, 'packages/python/scripts/setup.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (setup.status !== 0) {
    throw new Error(`packages/python/scripts/setup.sh failed: ${setup.stderr.slice(-2000)}`);
  }
  const child = spawn(
    path.join(repo, 'packages/python/.venv/bin/python'),
    [path.join(here, 'exec_py.py')],
    {
      cwd: repo,
      env: {
        ...process.env,
        FASTVM_API_KEY: apiKey,
        FASTVM_BASE_URL: baseUrl,
        FASTVM_BENCH_VM: vmId,
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => {
    const r = await Promise.race([lines.next(), exited.then(() => undefined)]);
    if (!r || r.done) throw new Error(`exec_py.py exited (${child.exitCode})`);
    return JSON.parse(r.value) as Record<string, unknown>;
  };
  const ready = await next();
  const py: PyExec = {
    protocol: String(ready['protocol']),
    connections: 1,
    async run(n) {
      child.stdin!.write(JSON.stringify({ n }) + '\n');
      const reply = await next();
      py.connections = Number(reply['connections']);
      return reply['ms'] as number[];
    },
    async close() {
      child.stdin!.end();
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
  return py;
}
