// In-process unit tests of the CLI's parsing, config and rendering helpers.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configPath, readConfig, resolveSettings, writeConfig } from '../src/config.js';
import { CliError } from '../src/errors.js';
import { main, protectExecArgs, splitGlobals } from '../src/main.js';
import { age, formatRule, table } from '../src/output.js';
import { parseRule } from '../src/rules.js';
import { exitStatus } from '../src/commands/vm.js';

function memoryIO(env: NodeJS.ProcessEnv): {
  io: Parameters<typeof main>[1];
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

describe('argument handling', () => {
  it('splits global options given before the command', () => {
    expect(
      splitGlobals(['--json', '--api-key', 'k', '--base-url=http://x', 'vm', 'list', '--json']),
    ).toEqual({
      globals: { json: true, apiKey: 'k', baseUrl: 'http://x' },
      help: false,
      version: false,
      rest: ['vm', 'list', '--json'],
    });
    expect(() => splitGlobals(['--bogus', 'vm'])).toThrow(/unknown option/);
    expect(() => splitGlobals(['--api-key'])).toThrow(/needs a value/);
  });

  it('hands everything after the VM of `vm exec` to the remote command', () => {
    expect(protectExecArgs(['exec', 'dev', 'ls', '-la'])).toEqual([
      'exec',
      'dev',
      '--',
      'ls',
      '-la',
    ]);
    expect(protectExecArgs(['exec', '--timeout', '5', '--json', 'dev', 'ls', '--json'])).toEqual([
      'exec',
      '--timeout',
      '5',
      '--json',
      'dev',
      '--',
      'ls',
      '--json',
    ]);
    expect(protectExecArgs(['exec', 'dev', '--', 'ls'])).toEqual(['exec', 'dev', '--', 'ls']);
    expect(protectExecArgs(['list', '--json'])).toEqual(['list', '--json']);
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
