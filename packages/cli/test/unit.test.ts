// In-process unit tests of the CLI's parsing, config and rendering helpers.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configPath, readConfig, resolveSettings, writeConfig } from '../src/config.js';
import { CliError } from '../src/errors.js';
import { VERSION as SDK_VERSION, type FastVM } from 'fastvm';
import { newCpCommand, type CpOptions } from '../src/commands/cp.js';
import {
  newFirewallPatchCommand,
  type FirewallPatchOptions,
} from '../src/commands/firewall/patch.js';
import { exitStatus, newVmExecCommand } from '../src/commands/vm/exec.js';
import { newVmLaunchCommand, type VmLaunchOptions } from '../src/commands/vm/launch.js';
import { newVmRmCommand, type VmRmOptions } from '../src/commands/vm/rm.js';
import type { RunF } from '../src/cmdutil.js';
import { Factory, type ClientSettings, type IO } from '../src/factory.js';
import { main } from '../src/main.js';
import { age, formatRule, table } from '../src/output.js';
import { parseRule } from '../src/rules.js';
import { VERSION } from '../src/version.js';
import type { Command } from 'commander';

function memoryIO(env: NodeJS.ProcessEnv): {
  io: IO;
  out: () => string;
  err: () => string;
} {
  let out = '';
  let err = '';
  return {
    io: {
      stdout: { write: (c: string | Uint8Array) => (out += String(c)) },
      stderr: { write: (c: string | Uint8Array) => (err += String(c)) },
      stdin: {},
      env,
    },
    out: () => out,
    err: () => err,
  };
}

describe('firewall rule syntax', () => {
  it('parses PROTO:PORT[-END][@CIDR,...]', () => {
    expect(parseRule('tcp:22')).toEqual({ protocol: 'tcp', portStart: 22 });
    expect(parseRule('udp:8000-8010')).toEqual({ protocol: 'udp', portStart: 8000, portEnd: 8010 });
    expect(parseRule('443')).toEqual({ protocol: 'tcp', portStart: 443 });
    expect(parseRule('tcp:22@2001:db8::/32,fd00::/8')).toEqual({
      protocol: 'tcp',
      portStart: 22,
      sourceCidrs: ['2001:db8::/32', 'fd00::/8'],
    });
  });

  it('rejects malformed rules with a helpful message', () => {
    for (const bad of [
      'icmp:1',
      'tcp:',
      'tcp:0',
      'tcp:70000',
      'tcp:10-5',
      'tcp:22@',
      'tcp:22@2001:db8::1',
      'tcp:ssh',
    ]) {
      expect(() => parseRule(bad), bad).toThrow(CliError);
    }
    expect(() => parseRule('tcp:10-5')).toThrow(/PROTO:PORT/);
  });

  it('formats rules back into the same syntax', () => {
    for (const spec of ['tcp:22', 'udp:8000-8010', 'tcp:22@2001:db8::/32,fd00::/8'])
      expect(formatRule(parseRule(spec))).toBe(spec);
  });
});

/**
 * Parses `args` with one command built by `newX(f, runF)` (gh's NewCmdX pattern) and returns the
 * options its run function would have received.
 */
async function parseOptions<T>(
  newX: (f: Factory, runF: RunF<T>) => Command,
  args: string[],
): Promise<T> {
  const m = memoryIO({});
  let got: T | undefined;
  const cmd = newX(new Factory(m.io), async (o) => {
    got = o;
    return 0;
  });
  await cmd.parseAsync(args, { from: 'user' });
  if (got === undefined) throw new Error(`no run: ${m.err()}`);
  return got;
}

/** A Factory whose client is a fake with `list()`; records the settings it was built from. */
function fakeClientFactory(env: NodeJS.ProcessEnv = {}): {
  f: Factory;
  settings: () => ClientSettings | undefined;
  out: () => string;
  err: () => string;
} {
  const m = memoryIO(env);
  let settings: ClientSettings | undefined;
  const f = new Factory(m.io, (s) => {
    settings = s;
    return { list: async () => [], close: async () => {} } as unknown as FastVM;
  });
  return { f, settings: () => settings, out: m.out, err: m.err };
}

describe('argument handling', () => {
  it('takes global options before the command and after it; the later one wins', async () => {
    let r = fakeClientFactory();
    expect(
      await main(['--json', '--api-key', 'k', '--base-url=http://x', 'vm', 'list', '--json'], r.f),
    ).toBe(0);
    expect(r.settings()).toEqual({ apiKey: 'k', baseUrl: 'http://x' });
    expect(r.out()).toBe('[]\n'); // --json
    r = fakeClientFactory();
    expect(
      await main(['--api-key', 'a', 'vm', '--api-key', 'b', 'ls', '--api-key', 'c'], r.f),
    ).toBe(0);
    expect(r.settings()?.apiKey).toBe('c');
    expect(r.out()).toBe('No VMs.\n');
    r = fakeClientFactory();
    expect(await main(['--bogus', 'vm'], r.f)).toBe(1);
    expect(r.err()).toMatch(/^Error: unknown option '--bogus'/);
    r = fakeClientFactory();
    expect(await main(['--api-key'], r.f)).toBe(1);
    expect(r.err()).toMatch(/^Error: option '--api-key' needs a value/);
  });

  it('prints help and the version, and rejects unknown commands with exit code 2', async () => {
    let r = fakeClientFactory();
    expect(await main([], r.f)).toBe(0);
    expect(r.out()).toMatch(/^FastVM command-line tool/);
    for (const args of [['--help', 'vm'], ['vm', '--help'], ['help', 'vm'], ['vm']]) {
      r = fakeClientFactory();
      expect(await main(args, r.f), args.join(' ')).toBe(0);
      expect(r.out(), args.join(' ')).toMatch(/^Usage: fastvm vm \[options\] \[command\]/);
      expect(r.out()).toMatch(/^ +exec \[options\] <vm> <command\.\.\.>/m);
    }
    r = fakeClientFactory();
    expect(await main(['vm', 'exec', '--help'], r.f)).toBe(0);
    expect(r.out()).toMatch(/Global options:\n +--json/);
    r = fakeClientFactory();
    expect(await main(['-V'], r.f)).toBe(0);
    expect(r.out()).toBe(`fastvm ${VERSION} (sdk ${SDK_VERSION})\n`);
    r = fakeClientFactory();
    expect(await main(['frobnicate'], r.f)).toBe(2);
    expect(r.err()).toBe("Error: unknown command 'frobnicate' (see 'fastvm --help')\n");
    r = fakeClientFactory();
    expect(await main(['snapshot', 'frobnicate'], r.f)).toBe(2);
    expect(r.err()).toMatch(/^Error: unknown command 'fastvm snapshot frobnicate'/);
    r = fakeClientFactory();
    expect(await main(['vm', 'get'], r.f)).toBe(1);
    expect(r.err()).toBe("Error: missing required argument 'vm' (see 'fastvm vm get --help')\n");
    expect(r.settings()).toBeUndefined(); // no client for a usage error
  });

  it('hands everything after the VM of `vm exec` to the remote command', async () => {
    expect(await parseOptions(newVmExecCommand, ['dev', 'ls', '-la'])).toMatchObject({
      vm: 'dev',
      command: ['ls', '-la'],
      json: false,
      argv: false,
      stream: true,
    });
    expect(
      await parseOptions(newVmExecCommand, ['--timeout', '5', '--json', 'dev', 'ls', '--json']),
    ).toMatchObject({ vm: 'dev', command: ['ls', '--json'], timeoutSec: 5, json: true });
    expect(await parseOptions(newVmExecCommand, ['dev', '--', 'ls'])).toMatchObject({
      vm: 'dev',
      command: ['ls'],
    });
    expect(
      await parseOptions(newVmExecCommand, ['--argv', '--no-stream', 'dev', 'a', '--', 'b']),
    ).toMatchObject({ command: ['a', '--', 'b'], argv: true, stream: false });
    await expect(parseOptions(newVmExecCommand, ['--timeout', '0', 'dev', 'ls'])).rejects.toThrow(
      /--timeout must be a positive integer/,
    );
  });

  it('turns flags into typed options (launch, rm, firewall patch, cp)', async () => {
    const launch: VmLaunchOptions = await parseOptions(newVmLaunchCommand, [
      '-n',
      'dev',
      '--disk-gib',
      '20',
      '-r',
      'tcp:22',
      '-r',
      'udp:53',
      '--ttl',
      '10m:delete',
      '--timeout',
      '60',
    ]);
    expect(launch).toMatchObject({
      machine: 'c1m2',
      name: 'dev',
      diskGib: 20,
      waitSec: 60,
      ttl: { seconds: 600, action: 'delete' },
      firewall: {
        mode: 'restricted',
        ingress: [
          { protocol: 'tcp', portStart: 22 },
          { protocol: 'udp', portStart: 53 },
        ],
      },
    });
    await expect(parseOptions(newVmLaunchCommand, ['--disk-gib', 'x'])).rejects.toThrow(
      /--disk-gib must be a positive integer/,
    );
    const rm: VmRmOptions = await parseOptions(newVmRmCommand, ['a', 'b', '-y']);
    expect(rm).toMatchObject({ vms: ['a', 'b'], yes: true });
    const patch: FirewallPatchOptions = await parseOptions(newFirewallPatchCommand, [
      'dev',
      '--clear-rules',
    ]);
    expect(patch.patch).toEqual({ ingress: [] });
    await expect(parseOptions(newFirewallPatchCommand, ['dev'])).rejects.toThrow(
      /nothing to change/,
    );
    const cp: CpOptions = await parseOptions(newCpCommand, ['dev:out.txt', '.']);
    expect(cp).toMatchObject({
      direction: 'download',
      remote: { vm: 'dev', path: '/root/out.txt' },
      local: '.',
    });
  });

  it('maps remote exit codes to process exit statuses', () => {
    expect([0, 1, 3, 255, -1, 256].map(exitStatus)).toEqual([0, 1, 3, 255, 255, 255]);
  });
});

describe('config', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fastvm-cli-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('lives under XDG_CONFIG_HOME, else ~/.config', () => {
    expect(configPath({ XDG_CONFIG_HOME: '/x/cfg', HOME: '/home/u' })).toBe(
      '/x/cfg/fastvm/config.json',
    );
    expect(configPath({ XDG_CONFIG_HOME: '', HOME: '/home/u' })).toBe(
      '/home/u/.config/fastvm/config.json',
    );
  });

  it('is written with mode 0600 and read back', () => {
    const env = { XDG_CONFIG_HOME: dir };
    const path = writeConfig(env, { 'api-key': 'secret', 'base-url': 'http://h:1' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readConfig(env)).toEqual({ 'api-key': 'secret', 'base-url': 'http://h:1' });
    expect(readConfig({ XDG_CONFIG_HOME: join(dir, 'missing') })).toEqual({});
  });

  it('reports a corrupt file', () => {
    mkdirSync(join(dir, 'fastvm'));
    writeFileSync(join(dir, 'fastvm', 'config.json'), '{nope');
    expect(() => readConfig({ XDG_CONFIG_HOME: dir })).toThrow(/not valid JSON/);
  });

  it('applies flags > env > file, with empty env values unset', () => {
    const file = { 'api-key': 'file-key', 'base-url': 'http://file' };
    expect(resolveSettings({}, {}, file)).toEqual({ apiKey: 'file-key', baseUrl: 'http://file' });
    expect(resolveSettings({}, { FASTVM_API_KEY: 'env-key', FASTVM_BASE_URL: '' }, file)).toEqual({
      apiKey: 'env-key',
      baseUrl: 'http://file',
    });
    expect(
      resolveSettings({ apiKey: 'flag-key' }, { FASTVM_API_KEY: 'env-key' }, file).apiKey,
    ).toBe('flag-key');
  });

  it('`config set/get/unset` round-trip through the file', async () => {
    const env = { XDG_CONFIG_HOME: dir };
    let m = memoryIO(env);
    expect(await main(['config', 'set', 'api-key', 'abcdefghijkl'], m.io)).toBe(0);
    expect(await main(['config', 'set', 'base-url', 'http://127.0.0.1:1'], m.io)).toBe(0);
    m = memoryIO(env);
    expect(await main(['config', 'get', 'api-key'], m.io)).toBe(0);
    expect(m.out()).toBe('abcdefghijkl\n');
    m = memoryIO(env);
    await main(['config', 'get'], m.io);
    expect(m.out()).toBe('api-key=abcd…ijkl\nbase-url=http://127.0.0.1:1\n');
    m = memoryIO(env);
    await main(['--json', 'config', 'get'], m.io);
    expect(JSON.parse(m.out())).toEqual({
      'api-key': 'abcdefghijkl',
      'base-url': 'http://127.0.0.1:1',
    });
    expect(await main(['config', 'unset', 'api-key'], m.io)).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, 'fastvm', 'config.json'), 'utf8'))).toEqual({
      'base-url': 'http://127.0.0.1:1',
    });
    m = memoryIO(env);
    expect(await main(['config', 'set', 'colour', 'x'], m.io)).toBe(1);
    expect(m.err()).toMatch(/^Error: unknown config key 'colour'/);
  });

  it('explains how to provide a missing API key', async () => {
    const m = memoryIO({ XDG_CONFIG_HOME: dir });
    expect(await main(['vm', 'list'], m.io)).toBe(1);
    expect(m.err()).toMatch(/^Error: no API key: pass --api-key, set FASTVM_API_KEY/);
  });
});

describe('version', () => {
  it('matches package.json', () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '../package.json'), 'utf8'));
    expect(VERSION).toBe(pkg.version);
  });
});

describe('rendering', () => {
  it('aligns table columns', () => {
    expect(
      table(
        ['ID', 'NAME'],
        [
          ['a', 'long-name'],
          ['bbbb', 'x'],
        ],
      ),
    ).toBe('ID    NAME\na     long-name\nbbbb  x\n');
  });

  it('prints compact ages', () => {
    const now = Date.parse('2026-01-02T00:00:00Z');
    expect(age('2026-01-01T23:59:30Z', now)).toBe('30s ago');
    expect(age('2026-01-01T23:00:00Z', now)).toBe('1h ago');
    expect(age('2025-12-30T00:00:00Z', now)).toBe('3d ago');
  });
});
