// The SDK and the CLI as users get them: `npm pack` of both, installed from the tarballs into an
// empty project (offline, with an empty npm cache: nothing may come from the registry), then used
// with plain `node` — ESM import and CJS require of `fastvm` against a real server, the SDK's
// types from a TypeScript consumer (ESM and CJS), and `npx fastvm` from the CLI tarball.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';

const REPO = resolve(import.meta.dirname, '../../..');
const KEY = 'fastvm-packed-test-key-0123456789';
const execFileP = promisify(execFile);

let tmp: string;
let project: string;
let server: ServerHandle;
let dataDir: string;

/** The environment of a user's shell: no NODE_OPTIONS or loaders from the test runner. */
function userEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env['PATH'],
    HOME: join(tmp, 'home'),
    npm_config_cache: join(tmp, 'npm-cache'),
    npm_config_offline: 'true',
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    FASTVM_API_KEY: KEY,
    FASTVM_BASE_URL: server.url,
    ...extra,
  };
}

async function run(
  file: string,
  args: string[],
  cwd = project,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(file, args, {
      cwd,
      env: userEnv(),
      timeout: 120_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return {
      code: typeof e.code === 'number' ? e.code : -1,
      stdout: e.stdout ?? '',
      stderr: e.stderr ?? '',
    };
  }
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fastvm-packed-'));
  project = join(tmp, 'project');
  mkdirSync(project);
  mkdirSync(join(tmp, 'home'));
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-packed-server-'));
  server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
  });
  // `npm pack` runs each package's prepack (scripts/build.mjs --if-stale).
  const packed = await run(
    'npm',
    ['pack', '--json', '--pack-destination', tmp, '-w', 'fastvm', '-w', '@fastvm/cli'],
    REPO,
  );
  expect(packed.stderr.replace(/^build: .*\n/gm, '')).not.toMatch(/ERR/);
  expect(packed.code).toBe(0);
  const tarballs = (JSON.parse(packed.stdout) as Array<{ filename: string }>).map((p) =>
    join(tmp, p.filename),
  );
  expect(tarballs).toHaveLength(2);
  writeFileSync(
    join(project, 'package.json'),
    JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }),
  );
  const installed = await run('npm', ['install', '--no-package-lock', ...tarballs]);
  expect(installed.stderr).not.toMatch(/npm (error|ERR)/);
  expect(installed.code).toBe(0);
}, 300_000);

afterAll(async () => {
  await server?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('the fastvm SDK tarball', () => {
  it('holds the build, not the test files', () => {
    const pkg = JSON.parse(
      readFileSync(join(project, 'node_modules/fastvm/package.json'), 'utf8'),
    ) as { dependencies?: unknown };
    expect(pkg.dependencies).toBeUndefined(); // dependency-free
    for (const file of ['dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/index.d.cts'])
      expect(() => readFileSync(join(project, 'node_modules/fastvm', file))).not.toThrow();
    expect(() => readFileSync(join(project, 'node_modules/fastvm/test/client.test.ts'))).toThrow();
  });

  it('works with import from plain node (ESM)', async () => {
    writeFileSync(
      join(project, 'esm.mjs'),
      [
        "import { FastVM, NotFoundError, VERSION } from 'fastvm';",
        'const client = new FastVM();',
        'const vm = await client.launch();',
        "const r = await client.run(vm, 'echo esm');",
        "const missing = await client.get('no-such-vm').catch((e) => e);",
        'console.log(JSON.stringify({ VERSION, status: vm.status, out: r.stdout,',
        '  notFound: missing instanceof NotFoundError, file: import.meta.resolve("fastvm") }));',
        'await client.close();',
      ].join('\n'),
    );
    const r = await run(process.execPath, ['esm.mjs']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({
      VERSION: '0.1.0',
      status: 'running',
      out: 'esm\n',
      notFound: true,
      file: expect.stringMatching(/\/node_modules\/fastvm\/dist\/index\.js$/),
    });
  });

  it('works with require from plain node (CommonJS)', async () => {
    writeFileSync(
      join(project, 'cjs.cjs'),
      [
        "const { FastVM, NotFoundError } = require('fastvm');",
        'const client = new FastVM();',
        '(async () => {',
        '  const vm = await client.launch();',
        "  const r = await client.run(vm, 'echo cjs');",
        "  const missing = await client.get('no-such-vm').catch((e) => e);",
        '  console.log(JSON.stringify({ out: r.stdout, notFound: missing instanceof NotFoundError,',
        "    file: require.resolve('fastvm') }));",
        '  await client.close();',
        '})();',
      ].join('\n'),
    );
    const r = await run(process.execPath, ['cjs.cjs']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({
      out: 'cjs\n',
      notFound: true,
      file: expect.stringMatching(/\/node_modules\/fastvm\/dist\/index\.cjs$/),
    });
  });

  it('gives TypeScript users its types, from ESM and from CommonJS', async () => {
    const dir = join(project, 'ts');
    mkdirSync(dir, { recursive: true });
    // The @ts-expect-error lines fail the check if the types were missing (`any`).
    const body = (client: string) =>
      [
        `const client = new ${client}({ apiKey: 'k' });`,
        "const vm: Promise<{ id: string; memoryMib: number }> = client.get('x');",
        '// @ts-expect-error machine is a string',
        'void client.launch({ machine: 1 });',
        '// @ts-expect-error no such method',
        'client.frobnicate();',
        'export { vm };',
      ].join('\n');
    writeFileSync(
      join(dir, 'esm.mts'),
      `import { FastVM, type VM } from 'fastvm';\nexport type V = VM;\n${body('FastVM')}\n`,
    );
    writeFileSync(
      join(dir, 'cjs.cts'),
      `import fastvm = require('fastvm');\nexport type V = fastvm.VM;\n${body('fastvm.FastVM')}\n`,
    );
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'nodenext',
          moduleResolution: 'nodenext',
          target: 'es2022',
          strict: true,
          noEmit: true,
          skipLibCheck: false,
          // @types/node: the SDK's types name Node's (EventEmitter), as a Node user's project has.
          typeRoots: [join(REPO, 'node_modules/@types')],
          types: ['node'],
        },
        files: ['esm.mts', 'cjs.cts'],
      }),
    );
    const tsc = join(REPO, 'node_modules/typescript/bin/tsc');
    const r = await run(process.execPath, [tsc, '-p', dir, '--explainFiles'], dir);
    expect(r.stdout).not.toMatch(/error TS/);
    expect(r.code).toBe(0);
    // Each module kind got its own declarations.
    expect(r.stdout).toMatch(
      /node_modules\/fastvm\/dist\/index\.d\.ts\n +Imported via 'fastvm' from file '.*esm\.mts'/,
    );
    expect(r.stdout).toMatch(
      /node_modules\/fastvm\/dist\/index\.d\.cts\n +Imported via 'fastvm' from file '.*cjs\.cts'/,
    );
  });
});

describe('the CLI tarball', () => {
  it('npx fastvm --help and --version', async () => {
    const help = await run('npx', ['fastvm', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^FastVM command-line tool/);
    const version = await run('npx', ['fastvm', '--version']);
    expect(version).toMatchObject({ code: 0, stdout: 'fastvm 0.1.0 (sdk 0.1.0)\n' });
  });

  it('runs commands against a server with the installed SDK', async () => {
    const launched = await run('npx', ['fastvm', 'vm', 'launch', '-n', 'packed-vm', '--json']);
    expect(launched.stderr).toBe('');
    expect(JSON.parse(launched.stdout)).toMatchObject({ name: 'packed-vm', status: 'running' });
    expect(await run('npx', ['fastvm', 'vm', 'exec', 'packed-vm', 'echo hi; exit 3'])).toEqual({
      code: 3,
      stdout: 'hi\n',
      stderr: '',
    });
  });
});
