/**
 * Start-up time of the `fastvm` command: wall time from spawn to exit of
 * `node packages/cli/bin/fastvm.cjs --version`, next to `node -e 0` (the floor) in the same run.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { now } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(here, '../packages/cli/bin/fastvm.cjs');

/** Wall time of `node ARGS` from spawn to exit, in ms; throws unless it exits 0. */
async function wall(args: string[]): Promise<number> {
  const t0 = now();
  // A plain environment: no NODE_OPTIONS (tsx's loader) from the bench's own process.
  const child = spawn(process.execPath, args, {
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  const ms = now() - t0;
  if (code !== 0) throw new Error(`node ${args.join(' ')} exited ${code}: ${stderr.trim()}`);
  return ms;
}

/**
 * `samples` interleaved pairs (CLI, then `node -e 0`) after three unmeasured pairs that warm the
 * page cache.
 */
export async function cliStart(samples: number): Promise<{ cli: number[]; node: number[] }> {
  const cli: number[] = [];
  const node: number[] = [];
  for (let i = 0; i < samples + 3; i++) {
    const c = await wall([BIN, '--version']);
    const n = await wall(['-e', '0']);
    if (i >= 3) {
      cli.push(c);
      node.push(n);
    }
  }
  return { cli, node };
}
