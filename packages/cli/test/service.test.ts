// `fastvm service add|ls|rm` and `vm launch --publish`: flag parsing and output, with a fake
// client (the SDK methods are tested against the server in packages/sdk/test/services.test.ts).
import type { Command } from 'commander';
import type { FastVM, Service } from 'fastvm';
import { describe, expect, it } from 'vitest';
import type { RunF } from '../src/cmdutil.js';
import {
  newServiceAddCommand,
  parsePublish,
  type ServiceAddOptions,
} from '../src/commands/service/add.js';
import { newVmLaunchCommand, type VmLaunchOptions } from '../src/commands/vm/launch.js';
import { Factory, type IO } from '../src/factory.js';
import { main } from '../src/main.js';

function memoryIO(env: NodeJS.ProcessEnv = {}): { io: IO; out: () => string; err: () => string } {
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

async function parseOptions<T>(
  newX: (f: Factory, runF: RunF<T>) => Command,
  args: string[],
): Promise<T> {
  let got: T | undefined;
  await newX(new Factory(memoryIO().io), async (o) => {
    got = o;
    return 0;
  }).parseAsync(args, { from: 'user' });
  return got!;
}

const web: Service = {
  name: 'web',
  port: 8000,
  h2c: false,
  auth: 'public',
  url: 'http://web--0123.proxy.localhost:8081',
  token: null,
};

describe('fastvm service', () => {
  it('parses PORT[:NAME], --name, --h2c and --auth', async () => {
    expect(parsePublish('8000')).toEqual({ port: 8000, name: 'p8000' });
    expect(parsePublish('8000:web')).toEqual({ port: 8000, name: 'web' });
    expect(() => parsePublish('web')).toThrow(/expected PORT or PORT:NAME/);
    const add: ServiceAddOptions = await parseOptions(newServiceAddCommand, [
      'dev',
      '50051:grpc',
      '--h2c',
      '--auth',
      'token',
    ]);
    expect(add).toMatchObject({ vm: 'dev', port: 50051, name: 'grpc', h2c: true, auth: 'token' });
    await expect(
      parseOptions(newServiceAddCommand, ['dev', '8000', '--auth', 'x']),
    ).rejects.toThrow(/--auth must be one of/);
    const launch: VmLaunchOptions = await parseOptions(newVmLaunchCommand, [
      '--publish',
      '8000',
      '-p',
      '9000:api',
    ]);
    expect(launch.publish).toEqual([
      { port: 8000, name: 'p8000' },
      { port: 9000, name: 'api' },
    ]);
  });

  it('add, ls and rm call the SDK and print tables or JSON', async () => {
    const calls: unknown[][] = [];
    const m = memoryIO({ FASTVM_API_KEY: 'k', FASTVM_BASE_URL: 'http://127.0.0.1:9' });
    const fake = {
      publishService: async (...a: unknown[]) => (calls.push(['publish', ...a]), web),
      listServices: async (...a: unknown[]) => (calls.push(['list', ...a]), [web]),
      removeService: async (...a: unknown[]) => void calls.push(['remove', ...a]),
      close: async () => {},
    } as unknown as FastVM;
    const main2 = (args: string[]) => main(args, new Factory(m.io, () => fake));
    expect(await main2(['service', 'add', 'dev', '8000:web'])).toBe(0);
    expect(await main2(['service', 'ls', 'dev', '--json'])).toBe(0);
    expect(await main2(['service', 'rm', 'dev', 'web'])).toBe(0);
    expect(calls).toEqual([
      ['publish', 'dev', 'web', 8000, { h2c: false, auth: undefined }],
      ['list', 'dev'],
      ['remove', 'dev', 'web'],
    ]);
    expect(m.out()).toContain('http://web--0123.proxy.localhost:8081');
    expect(m.out()).toContain('"url": "http://web--0123.proxy.localhost:8081"');
    expect(m.out()).toContain('Unpublished web');
  });
});
