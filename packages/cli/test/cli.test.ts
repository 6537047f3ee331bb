// The `fastvm` command as a subprocess against the real API server (@fastvm/server) with the
// in-memory FakeRuntime: --json output, human tables in a pseudo-terminal (`script` from
// util-linux), exit codes of `vm exec`, errors, and config precedence.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';

const BIN = resolve(import.meta.dirname, '../bin/fastvm.cjs');
const KEY = 'fastvm-cli-test-key-0123456789';

let server: ServerHandle;
let dataDir: string;
let home: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function fastvm(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: {
        PATH: process.env['PATH'],
        HOME: home,
        XDG_CONFIG_HOME: join(home, '.config'),
        FASTVM_API_KEY: KEY,
        FASTVM_BASE_URL: server.url,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
  });
}

/** Runs the CLI in a pseudo-terminal; stdout and stderr arrive merged, with \r\n line ends. */
function fastvmTTY(args: string[]): Promise<{ code: number | null; output: string }> {
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = [process.execPath, BIN, ...args].map(quote).join(' ');
  return new Promise((resolvePromise, reject) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], {
      env: {
        PATH: process.env['PATH'],
        HOME: home,
        XDG_CONFIG_HOME: join(home, '.config'),
        FASTVM_API_KEY: KEY,
        FASTVM_BASE_URL: server.url,
        TERM: 'xterm',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, output: output.replace(/\r\n/g, '\n') }));
  });
}

function parse<T = Record<string, unknown>>(r: Run): T {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as T;
}

// eslint-disable-next-line no-control-regex
const stripAnsi = (s: string): string => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-home-'));
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

describe('--json', () => {
  it('vm launch / get (by name) / list / rename / rm print wire-shaped JSON', async () => {
    const vm = parse(
      await fastvm(['vm', 'launch', '-m', 'c2m4', '-n', 'json-vm', '--disk-gib', '15', '--json']),
    );
    expect(vm).toMatchObject({
      name: 'json-vm',
      status: 'running',
      machineName: 'c2m4',
      cpu: 2,
      memoryMiB: 4096,
      diskGiB: 15,
    });
    expect(vm).not.toHaveProperty('memoryMib');
    const got = parse(await fastvm(['--json', 'vm', 'get', 'json-vm']));
    expect(got['id']).toBe(vm['id']);
    const list = parse<Array<Record<string, unknown>>>(await fastvm(['vm', 'list', '--json']));
    expect(list.map((v) => v['id'])).toContain(vm['id']);
    const renamed = parse(await fastvm(['vm', 'rename', 'json-vm', 'json-vm-2', '--json']));
    expect(renamed['name']).toBe('json-vm-2');
    const removed = parse(await fastvm(['vm', 'rm', 'json-vm-2', '-y', '--json']));
    expect(removed).toEqual({ id: vm['id'], deleted: true });
    const gone = await fastvm(['vm', 'get', String(vm['id'])]);
    expect(gone.code).toBe(1);
  });

  it('snapshot create / list / rename / restore / rm', async () => {
    parse(await fastvm(['vm', 'launch', '-n', 'snap-src', '--json']));
    const snap = parse(
      await fastvm(['snapshot', 'create', 'snap-src', '-n', 'cli-snap', '--json']),
    );
    expect(snap).toMatchObject({ name: 'cli-snap', status: 'ready' });
    const list = parse<Array<Record<string, unknown>>>(
      await fastvm(['snapshot', 'list', '--json']),
    );
    expect(list.map((s) => s['name'])).toContain('cli-snap');
    expect(
      parse(await fastvm(['snapshot', 'rename', 'cli-snap', 'cli-snap-2', '--json']))['name'],
    ).toBe('cli-snap-2');
    const restored = parse(
      await fastvm(['snapshot', 'restore', 'cli-snap-2', '-n', 'from-snap', '--json']),
    );
    expect(restored).toMatchObject({ name: 'from-snap', status: 'running' });
    const exec = await fastvm(['vm', 'exec', 'from-snap', 'echo', 'restored']);
    expect(exec).toEqual({ code: 0, stdout: 'restored\n', stderr: '' });
    expect(parse(await fastvm(['snapshot', 'rm', 'cli-snap-2', '-y', '--json']))).toEqual({
      id: snap['id'],
      deleted: true,
    });
  });

  it('firewall set / patch / get', async () => {
    parse(await fastvm(['vm', 'launch', '-n', 'fw-vm', '--json']));
    const set = parse(
      await fastvm([
        'firewall',
        'set',
        'fw-vm',
        '--mode',
        'restricted',
        '-r',
        'tcp:22',
        '-r',
        'udp:8000-8010@2001:db8::/32',
        '--json',
      ]),
    );
    expect(set).toEqual({
      mode: 'restricted',
      ingress: [
        { protocol: 'tcp', portStart: 22 },
        { protocol: 'udp', portStart: 8000, portEnd: 8010, sourceCidrs: ['2001:db8::/32'] },
      ],
    });
    const patched = parse(await fastvm(['firewall', 'patch', 'fw-vm', '--mode', 'open', '--json']));
    expect(patched['mode']).toBe('open');
    expect(patched['ingress']).toHaveLength(2);
    const cleared = parse(await fastvm(['firewall', 'patch', 'fw-vm', '--clear-rules', '--json']));
    expect((cleared['ingress'] as unknown[] | undefined) ?? []).toEqual([]);
    const bad = await fastvm([
      'firewall',
      'set',
      'fw-vm',
      '--mode',
      'restricted',
      '-r',
      'tcp:99999',
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^Error: invalid rule 'tcp:99999'/);
  });

  it('firewall egress (v2): rules by name and CIDR, DNS policy; ingress kept; v1 get unchanged', async () => {
    parse(await fastvm(['vm', 'launch', '-n', 'egress-vm', '--json']));
    await fastvm(['firewall', 'set', 'egress-vm', '--mode', 'restricted', '-r', 'tcp:22']);
    const set = parse(
      await fastvm([
        ...['firewall', 'egress', 'egress-vm', '--default', 'deny'],
        ...[
          '--allow',
          'tcp:443@*.GitHub.com',
          '--allow',
          'any@10.0.0.0/8',
          '--deny',
          'udp:53@192.0.2.1',
        ],
        ...['--dns-deny', 'ads.example.com', '--block-bypass', '--json'],
      ]),
    );
    expect(set).toEqual({
      egress: {
        default: 'deny',
        rules: [
          { action: 'deny', kind: 'cidr', protocol: 'udp', ports: '53', value: '192.0.2.1' },
          { action: 'allow', kind: 'fqdn', protocol: 'tcp', ports: '443', value: '*.github.com' },
          { action: 'allow', kind: 'cidr', protocol: 'any', ports: 'any', value: '10.0.0.0/8' },
        ],
      },
      dns: { mode: 'deny', domains: ['ads.example.com'], blockBypass: true },
    });
    // The v1 view for `firewall get` is unchanged by egress rules.
    expect(parse(await fastvm(['firewall', 'get', 'egress-vm', '--json']))).toEqual({
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 22 }],
    });
    const dead = await fastvm(['firewall', 'egress', 'egress-vm', '--dns-allow', 'example.org']);
    expect(dead.code).toBe(1);
    expect(dead.stderr).toMatch(/dead/);
    const bad = await fastvm([
      'firewall',
      'egress',
      'egress-vm',
      '--default',
      'deny',
      '--allow',
      'any:443@x.com',
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^Error: invalid egress rule 'any:443@x.com'/);
  });

  it('quota', async () => {
    const q = parse(await fastvm(['quota', '--json']));
    expect(q).toMatchObject({
      limits: { vcpu: expect.any(Number), memoryMiB: expect.any(Number) },
    });
    expect((q['usage'] as Record<string, number>)['vcpu']).toBeGreaterThan(0);
  });
});

describe('vm exec', () => {
  it('writes stdout and stderr raw and exits with the command exit code', async () => {
    await fastvm(['vm', 'launch', '-n', 'exec-vm', '--json']);
    expect(await fastvm(['vm', 'exec', 'exec-vm', 'echo out; echo err >&2; exit 7'])).toEqual({
      code: 7,
      stdout: 'out\n',
      stderr: 'err\n',
    });
    expect(await fastvm(['vm', 'exec', 'exec-vm', 'echo', 'hello', 'world'])).toEqual({
      code: 0,
      stdout: 'hello world\n',
      stderr: '',
    });
    expect((await fastvm(['vm', 'exec', 'exec-vm', 'false'])).code).toBe(1);
  });

  it('treats options after the VM as part of the remote command, and --json as a result object', async () => {
    expect((await fastvm(['vm', 'exec', 'exec-vm', 'echo', '-n', '--json'])).stdout).toBe('--json');
    const r = await fastvm(['vm', 'exec', '--json', 'exec-vm', 'exit 3']);
    expect(r.code).toBe(3);
    expect(JSON.parse(r.stdout)).toMatchObject({ exitCode: 3, timedOut: false });
  });

  it('reports a server-side timeout with exit code 124', async () => {
    const r = await fastvm(['vm', 'exec', '--timeout', '1', 'exec-vm', 'sleep 5']);
    expect(r.code).toBe(124);
    expect(r.stderr).toMatch(/timed out/);
  });
});

describe('errors', () => {
  it('prints "Error: <status> <message>" and exits 1', async () => {
    const missing = await fastvm(['vm', 'get', 'no-such-vm']);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toMatch(/^Error: 404 \S/);
    const unauthorized = await fastvm(['vm', 'list', '--api-key', 'wrong']);
    expect(unauthorized.code).toBe(1);
    expect(unauthorized.stderr).toMatch(/^Error: 401 \S/);
  });

  it('rejects unknown commands and options', async () => {
    const r = await fastvm(['vm', 'frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command/);
    expect((await fastvm(['vm', 'launch', '--bogus'])).code).toBe(1);
  });
});

describe('configuration precedence', () => {
  it('uses the config file when neither flags nor env are set, env over file, flags over env', async () => {
    const cfgHome = join(home, 'cfg-test');
    const env = { XDG_CONFIG_HOME: cfgHome, FASTVM_API_KEY: '', FASTVM_BASE_URL: '' };
    expect((await fastvm(['config', 'set', 'api-key', KEY], env)).code).toBe(0);
    expect((await fastvm(['config', 'set', 'base-url', server.url], env)).code).toBe(0);
    expect(statSync(join(cfgHome, 'fastvm', 'config.json')).mode & 0o777).toBe(0o600);
    expect((await fastvm(['vm', 'list', '--json'], env)).code).toBe(0);
    // env wins over the file
    expect((await fastvm(['vm', 'list'], { ...env, FASTVM_API_KEY: 'env-wrong' })).stderr).toMatch(
      /^Error: 401/,
    );
    // the flag wins over env
    expect(
      (await fastvm(['vm', 'list', '--api-key', KEY], { ...env, FASTVM_API_KEY: 'env-wrong' }))
        .code,
    ).toBe(0);
    // a bad base URL in the file is overridden by the flag
    mkdirSync(join(cfgHome, 'fastvm'), { recursive: true });
    writeFileSync(
      join(cfgHome, 'fastvm', 'config.json'),
      JSON.stringify({ 'api-key': KEY, 'base-url': 'http://127.0.0.1:9' }),
    );
    expect((await fastvm(['vm', 'list'], env)).stderr).toMatch(/^Error: .*127\.0\.0\.1:9/);
    expect((await fastvm(['--base-url', server.url, 'vm', 'list'], env)).code).toBe(0);
  });
});

describe('in a terminal', () => {
  it('vm list prints an aligned table', async () => {
    await fastvm(['vm', 'launch', '-n', 'tty-vm', '--json']);
    const { code, output } = await fastvmTTY(['vm', 'list']);
    expect(code).toBe(0);
    const lines = stripAnsi(output).trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+NAME\s+MACHINE\s+STATUS\s+IPV6\s+CREATED$/);
    const row = lines.find((l) => l.includes(' tty-vm '));
    expect(row).toMatch(/^[0-9a-f-]{36}\s+tty-vm\s+c1m2\s+running\s+-\s+\d+s ago$/);
    // columns line up: NAME starts at the same offset in the header and every row
    const nameCol = lines[0]!.indexOf('NAME');
    for (const l of lines.slice(1)) expect(l[nameCol - 1]).toBe(' ');
    expect(output).toContain('\x1b[32mrunning\x1b[39m'); // coloured on a TTY
  });

  it('vm launch shows progress on stderr, then the VM', async () => {
    const { code, output } = await fastvmTTY(['vm', 'launch', '-n', 'tty-launch']);
    expect(code).toBe(0);
    expect(output).toMatch(/Launching c1m2 VM tty-launch…/);
    expect(output).toMatch(/✓ VM tty-launch is running \(\d+\.\ds\)/);
    expect(stripAnsi(output)).toMatch(/^NAME\s+tty-launch$/m);
  });

  it('vm exec propagates the exit code and output', async () => {
    const { code, output } = await fastvmTTY(['vm', 'exec', 'tty-vm', 'echo from-vm; exit 42']);
    expect(code).toBe(42);
    expect(output).toBe('from-vm\n');
  });

  it('quota and snapshot list render tables', async () => {
    const quota = await fastvmTTY(['quota']);
    expect(stripAnsi(quota.output)).toMatch(/^RESOURCE\s+USED\s+LIMIT\s+USE%\nvCPU\s+\d+\s+\d+/);
    await fastvm(['snapshot', 'create', 'tty-vm', '-n', 'tty-snap']);
    const snaps = await fastvmTTY(['snapshot', 'list']);
    expect(stripAnsi(snaps.output)).toMatch(/^ID\s+NAME\s+VM\s+STATUS\s+CREATED$/m);
    expect(stripAnsi(snaps.output)).toMatch(/\stty-snap\s/);
  });

  it('errors print to stderr and exit 1', async () => {
    const { code, output } = await fastvmTTY(['vm', 'get', 'missing-vm']);
    expect(code).toBe(1);
    expect(output).toMatch(/^Error: 404 /);
  });
});
