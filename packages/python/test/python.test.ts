/**
 * The Python SDK (packages/python) in `npm test`: sets up its virtual environment
 * (`scripts/setup.sh`: idempotent, seconds when nothing changed), type-checks it with
 * `mypy --strict`, then runs its pytest suite: unit tests against the stub server, TLS against
 * the real server's TLS listener, and every code block of the seed against a real server with
 * real VMs.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const python = path.join(pkg, '.venv', 'bin', 'python');

interface Result {
  code: number | null;
  output: string;
}

/** Runs a command in packages/python; resolves with its exit code and combined output. */
function run(cmd: string, args: string[], timeoutMs: number): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: pkg,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      output += `\n[killed after ${timeoutMs} ms]`;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 30_000).unref();
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** The last lines of a command's output (enough for pytest's failure summary). */
function tail(r: Result, lines = 120): string {
  return r.output.split('\n').slice(-lines).join('\n');
}

/** pytest's final "N passed, ... in S s" line. */
function summary(r: Result): string {
  const lines = r.output.trim().split('\n');
  return lines[lines.length - 1] ?? '';
}

describe('Python SDK (packages/python)', () => {
  beforeAll(async () => {
    const setup = await run('bash', ['scripts/setup.sh'], 600_000);
    expect(setup.code, `scripts/setup.sh failed:\n${tail(setup)}`).toBe(0);
  }, 660_000);

  it('type-checks with mypy --strict (package and tests)', async () => {
    const r = await run(python, ['-m', 'mypy', '--strict', 'src/fastvm', 'test'], 300_000);
    expect(r.code, tail(r)).toBe(0);
  }, 330_000);

  it('passes the unit and TLS tests (stub server, real server with the FakeRuntime)', async () => {
    const r = await run(python, ['-m', 'pytest', '-q', '-m', 'not vm', 'test'], 600_000);
    console.log(`pytest (not vm): ${summary(r)}`);
    expect(r.code, tail(r)).toBe(0);
  }, 630_000);

  it('runs every seed example against a real server with real VMs', async () => {
    const r = await run(python, ['-m', 'pytest', '-q', '-rs', '-m', 'vm', 'test'], 1_200_000);
    console.log(`pytest (vm): ${summary(r)}`);
    expect(r.code, tail(r)).toBe(0);
    expect(r.output, 'the VM tests were skipped').not.toMatch(/skipped/);
  }, 1_230_000);
});
