#!/usr/bin/env node
// Builds the packages users install: the SDK (`fastvm`: ESM + CJS + type declarations), the CLI
// (`@fastvm/cli`: one ESM file with commander bundled in; `fastvm` stays an import) and the web
// console the server serves at `/` (`@fastvm/dashboard`: Vite, into packages/dashboard/dist).
//
//   node scripts/build.mjs [sdk] [cli] [dashboard] [--if-stale]
//
// --if-stale skips a package whose inputs (sources, package.json, this script, the versions of
// tsup or Vite and of bundled packages) hash to the value recorded by its last build
// (dist/.build-hash). Each build is written to a
// temporary directory and its files renamed into dist/ one by one, so a process that loads dist/
// while another build runs (a test next to `npm test`) sees whole files.
import console from 'node:console';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

/**
 * commander requires node:child_process when it loads, for executable subcommands, which fastvm
 * does not have; loading it (with net, dgram and streams) at every start costs more than the rest
 * of the CLI's start-up. This resolves commander's import to a module that requires it on first
 * use.
 */
function lazyChildProcess() {
  return {
    name: 'lazy-child-process',
    setup(build) {
      build.onResolve({ filter: /^node:child_process$/ }, (args) =>
        /[\\/]commander[\\/]/.test(args.importer)
          ? { path: 'lazy-child-process', namespace: 'fastvm-lazy' }
          : undefined,
      );
      build.onLoad({ filter: /.*/, namespace: 'fastvm-lazy' }, () => ({
        contents:
          'let cp;\n' +
          "module.exports = new Proxy({}, { get: (_, key) => (cp ??= require('node:child_process'))[key] });\n",
        loader: 'js',
      }));
    },
  };
}

/** tsup options per package (entry points relative to the package directory). */
const PACKAGES = {
  sdk: {
    dir: 'packages/sdk',
    tsup: {
      entry: ['src/index.ts'],
      format: ['esm', 'cjs'],
      dts: true,
      sourcemap: true,
    },
  },
  cli: {
    dir: 'packages/cli',
    tsup: {
      entry: ['src/main.ts'],
      // One CommonJS file: a CJS bin loads it without starting Node's ESM loader, and its
      // require() of Node built-ins skips the ESM facades (whose getters load fs/promises and
      // streams). The SDK stays an import(), done when a command needs a client.
      format: ['cjs'],
      shims: true,
      // commander is bundled (it is a devDependency): the installed CLI is one file to load.
      noExternal: ['commander'],
      external: ['fastvm'],
      esbuildPlugins: [lazyChildProcess()],
    },
    /** Licences of bundled code, copied next to the bundle. */
    licenses: { commander: 'LICENSE' },
  },
  dashboard: {
    dir: 'packages/dashboard',
    // Built by Vite from index.html (vite.config.ts); everything it imports is bundled.
    vite: true,
    extraInputs: ['index.html', 'vite.config.ts', 'tsconfig.json'],
    bundled: ['preact', '@xterm/xterm', '@xterm/addon-fit'],
  },
};

/** The directory of `dep` as resolved from the package in `dir`. */
function packageDir(dir, dep) {
  let d = path.dirname(createRequire(path.join(dir, 'package.json')).resolve(dep));
  while (
    !fs.existsSync(path.join(d, 'package.json')) ||
    readJson(path.join(d, 'package.json')).name !== dep
  ) {
    if (path.dirname(d) === d) throw new Error(`build: cannot find the directory of ${dep}`);
    d = path.dirname(d);
  }
  return d;
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function inputs(pkg) {
  const dir = path.join(repo, pkg.dir);
  const files = [path.join(dir, 'package.json'), fileURLToPath(import.meta.url)];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(path.join(dir, 'src'));
  for (const extra of pkg.extraInputs ?? []) files.push(path.join(dir, extra));
  return files.sort();
}

function inputHash(pkg) {
  const h = createHash('sha256');
  h.update(require(pkg.vite ? 'vite/package.json' : 'tsup/package.json').version);
  for (const dep of pkg.vite ? pkg.bundled : (pkg.tsup.noExternal ?? []))
    h.update(
      readJson(path.join(packageDir(path.join(repo, pkg.dir), dep), 'package.json')).version,
    );
  for (const file of inputs(pkg)) {
    h.update(path.relative(repo, file));
    h.update('\0');
    h.update(fs.readFileSync(file));
    h.update('\0');
  }
  return h.digest('hex');
}

async function tsupBuild(pkg, dir, outDir) {
  const { build: tsup } = await import('tsup');
  await tsup({
    ...pkg.tsup,
    entry: pkg.tsup.entry.map((e) => path.join(dir, e)),
    outDir,
    platform: 'node',
    target: 'node20',
    tsconfig: path.join(dir, 'tsconfig.json'),
    // Keep `node:` specifiers (the default strips them).
    removeNodeProtocol: false,
    silent: true,
    config: false,
  });
}

async function viteBuild(dir, outDir) {
  const { build: vite } = await import('vite');
  await vite({
    root: dir,
    configFile: path.join(dir, 'vite.config.ts'),
    logLevel: 'warn',
    build: { outDir, emptyOutDir: true },
  });
}

async function build(name, ifStale) {
  const pkg = PACKAGES[name];
  const dir = path.join(repo, pkg.dir);
  const dist = path.join(dir, 'dist');
  const hashFile = path.join(dist, '.build-hash');
  const hash = inputHash(pkg);
  if (ifStale) {
    try {
      if (fs.readFileSync(hashFile, 'utf8').trim() === hash) return false;
    } catch {
      // not built yet
    }
  }
  const tmp = fs.mkdtempSync(path.join(dir, '.dist-'));
  try {
    if (pkg.vite) await viteBuild(dir, tmp);
    else await tsupBuild(pkg, dir, tmp);
    for (const [dep, file] of Object.entries(pkg.licenses ?? {})) {
      fs.mkdirSync(path.join(tmp, 'licenses'), { recursive: true });
      fs.copyFileSync(
        path.join(packageDir(dir, dep), file),
        path.join(tmp, 'licenses', `${dep}.txt`),
      );
    }
    const built = new Set();
    const move = (rel) => {
      const from = path.join(tmp, rel);
      if (fs.statSync(from).isDirectory()) {
        for (const e of fs.readdirSync(from)) move(path.join(rel, e));
        return;
      }
      fs.mkdirSync(path.dirname(path.join(dist, rel)), { recursive: true });
      fs.renameSync(from, path.join(dist, rel));
      built.add(rel);
    };
    move('.');
    // Drop what an earlier build left that this one did not write.
    const prune = (rel) => {
      const p = path.join(dist, rel);
      if (fs.statSync(p).isDirectory()) {
        for (const e of fs.readdirSync(p)) prune(path.join(rel, e));
      } else if (!built.has(path.normalize(rel)) && rel !== '.build-hash') {
        fs.rmSync(p, { force: true });
      }
    };
    prune('.');
    fs.writeFileSync(`${hashFile}.${process.pid}`, `${hash}\n`);
    fs.renameSync(`${hashFile}.${process.pid}`, hashFile);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return true;
}

const args = process.argv.slice(2);
const ifStale = args.includes('--if-stale');
const names = args.filter((a) => !a.startsWith('--'));
for (const name of names.length > 0 ? names : Object.keys(PACKAGES)) {
  if (!(name in PACKAGES)) {
    console.error(`build: unknown package '${name}' (known: ${Object.keys(PACKAGES).join(', ')})`);
    process.exit(2);
  }
  const t0 = performance.now();
  if (await build(name, ifStale)) {
    console.error(
      `build: ${PACKAGES[name].dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
  }
}
