// `fastvm vm exec --detach` and `fastvm vm attach` in process (main() with a real client) against
// the API server with the FakeRuntime (issue 18, part 5).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import { Factory, type IO } from '../src/factory.js';
import { main } from '../src/main.js';

const KEY = 'fastvm-cli-exec-sessions-key-0123';
const FIVE = 'echo 1; sleep 0.2; echo 2; sleep 0.2; echo 3 >&2; sleep 0.2; echo 4; exit 7';

let server: ServerHandle;
let dataDir: string;
let home: string;

/** Runs `fastvm ARGS` in this process; returns its exit code and output. */
async function fastvm(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: IO = {
    stdout: { write: (c: string | Uint8Array) => (out += Buffer.from(c).toString()) },
    stderr: { write: (c: string | Uint8Array) => (err += Buffer.from(c).toString()) },
    stdin: {},
    env: {
      FASTVM_API_KEY: KEY,
      FASTVM_BASE_URL: server.url,
      HOME: home,
      XDG_CONFIG_HOME: join(home, '.config'),
    },
  };
  const f = new Factory(io);
  // (main closes the client.)
  const code = await main(args, f);
  return { code, out, err };
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-execs-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-execs-home-'));
  server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
  });
});

afterAll(async () => {
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

describe('vm exec --detach and vm attach', () => {
  it('prints the exec id, then attach replays and follows it to its exit code', async () => {
    const launched = await fastvm(['vm', 'launch', '-n', 'cli-execs', '--json']);
    expect(launched.code).toBe(0);

    const detached = await fastvm(['vm', 'exec', '--detach', 'cli-execs', FIVE]);
    expect(detached).toMatchObject({ code: 0, err: '' });
    const execId = detached.out.trim();
    expect(execId).toMatch(/^[0-9a-f-]{36}$/);

    const attached = await fastvm(['vm', 'attach', 'cli-execs', execId]);
    expect(attached).toEqual({ code: 7, out: '1\n2\n4\n', err: '3\n' });

    // From an offset: "1\n2\n" is 4 bytes.
    const tail = await fastvm(['vm', 'attach', '--from-offset', '4', 'cli-execs', execId]);
    expect(tail).toEqual({ code: 7, out: '4\n', err: '3\n' });

    const asJson = await fastvm(['vm', 'attach', '--json', 'cli-execs', execId]);
    const lines = asJson.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines[0]).toEqual({
      type: 'stdout',
      offset: 0,
      data: Buffer.from('1\n').toString('base64'),
    });
    expect(lines.at(-1)).toMatchObject({ type: 'exit', exitCode: 7, timedOut: false });

    const session = await fastvm(['vm', 'exec', '--detach', '--json', 'cli-execs', 'true']);
    expect(JSON.parse(session.out)).toMatchObject({ status: 'running', keepAlive: true });
  });

  it('reports unknown sessions and bad offsets', async () => {
    const unknown = await fastvm(['vm', 'attach', 'cli-execs', 'no-such-exec']);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/not found/);
    const bad = await fastvm(['vm', 'attach', '--from-offset', '-3', 'cli-execs', 'x']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/--from-offset/);
  });
});
