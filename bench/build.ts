/**
 * Builds (issue 15): `npm run bench -- --only build`. A real server over its own QemuRuntime,
 * driven through the SDK's `client.build()` (zip + upload + start + poll every 50 ms) with a
 * 3-step Dockerfile on the platform base (COPY a file, RUN, RUN):
 *
 * - `build_cold`: new content for the COPY (and a new `ENV` value) changes every step's cache key;
 * - `build_cached`: the same Dockerfile again (every step from the step cache: one restore of
 *   the last step and the result snapshot; target ≤ 1 s);
 * - `build_last_step`: only the last RUN changed (≈ one step);
 * - `build_last_step_vs_cold_step`: `build_last_step` / (`build_cold` / 3), per round; a cold
 *   build's steps run in one VM launched from the warm pool, a changed last step first restores
 *   the cached state (a cold restore), so `build_last_step_extra_vs_cold_step` leaves that out:
 *   (`build_last_step` − `build_cached`) / (`build_cold` / 3);
 * - `build_cached_server`: the cached build's server side (startedAt → finishedAt).
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { QemuRuntime } from '@fastvm/runtime';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FastVM } from 'fastvm';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

export async function groupBuild(opts: {
  rec: Recorder;
  root: string;
  runtime: (dataDir: string) => Promise<QemuRuntime>;
  release: (rt: QemuRuntime) => Promise<void>;
  track: (server: ServerHandle, live: boolean) => void;
  rounds: number;
  log: (s: string) => void;
}): Promise<void> {
  const { rec } = opts;
  const dir = path.join(opts.root, 'build');
  const ctx = path.join(dir, 'ctx');
  fs.mkdirSync(ctx, { recursive: true });
  fs.writeFileSync(path.join(ctx, 'app.txt'), 'x'.repeat(64 * 1024));
  const rt = await opts.runtime(path.join(dir, 'rt'));
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  const server = await startServer({
    dataDir: path.join(dir, 'srv'),
    runtime: rt,
    bootstrapKey: key,
    port: 0,
    logLevel: 'silent',
    shutdownGraceMs: 2000,
    dashboardDir: false,
  });
  opts.track(server, true);
  const client = new FastVM({ apiKey: key, baseUrl: server.url, maxRetries: 0 });
  const dockerfile = (nonce: string, last: string) =>
    `FROM fastvm/base\nENV NONCE=${nonce}\nCOPY app.txt /srv/app.txt\nRUN wc -c /srv/app.txt > /srv/size\nRUN ${last}\n`;
  const serverMs: number[] = [];
  const build = async (text: string, want: { cached: number }) => {
    const t = now();
    const snap = await client.build({ dockerfile: text, context: ctx, pollInterval: 50 });
    const ms = now() - t;
    const imports = await client.listImports();
    const steps = imports[0]?.steps;
    const { startedAt, finishedAt } = imports[0] ?? {};
    if (startedAt && finishedAt) serverMs.push(Date.parse(finishedAt) - Date.parse(startedAt));
    if (steps?.cached !== want.cached) {
      throw new Error(`expected ${want.cached} cached steps, got ${JSON.stringify(steps)}`);
    }
    await client.removeSnapshot(snap.id);
    return ms;
  };
  try {
    await build(dockerfile('warm', 'true'), { cached: 0 }); // warm-up: golden, pool, paths
    for (let i = 0; i < opts.rounds; i++) {
      const nonce = crypto.randomBytes(6).toString('hex');
      // New content too: a COPY's key is its content, not the ENV before it.
      fs.writeFileSync(path.join(ctx, 'app.txt'), nonce + 'x'.repeat(64 * 1024));
      const cold = await build(dockerfile(nonce, 'echo one'), { cached: 0 });
      const cached = await build(dockerfile(nonce, 'echo one'), { cached: 3 });
      const last = await build(dockerfile(nonce, 'echo two'), { cached: 2 });
      rec.add('build_cold', 'ms', cold);
      rec.add('build_cached', 'ms', cached);
      rec.add('build_last_step', 'ms', last);
      rec.add('build_last_step_vs_cold_step', 'ratio', last / (cold / 3));
      // What the changed step adds over a fully cached build (which pays the restore).
      rec.add('build_last_step_extra_vs_cold_step', 'ratio', (last - cached) / (cold / 3));
      // Server side (claimed → succeeded) of the cached build: without zip, upload and polling.
      rec.add('build_cached_server', 'ms', serverMs.at(-2)!);
      opts.log(
        `  round ${i + 1}: cold ${cold.toFixed(0)} ms, cached ${cached.toFixed(0)} ms, last ${last.toFixed(0)} ms`,
      );
    }
    rec.note(
      'build_cold',
      'SDK client.build(): zip + upload + 3-step Dockerfile on fastvm/base (COPY 64 KiB, RUN, RUN), every step new; until the snapshot is returned',
    );
    rec.note(
      'build_cached',
      'the same Dockerfile again: all 3 steps from the step cache (target ≤ 1 s)',
    );
    rec.note('build_last_step', 'only the last RUN changed: 2 steps cached, 1 run');
    rec.note(
      'build_cached_server',
      'build_cached from the server record: startedAt → finishedAt (restore of the last step + the result snapshot)',
    );
    rec.note('build_last_step_vs_cold_step', 'build_last_step / (build_cold / 3), per round');
    rec.note(
      'build_last_step_extra_vs_cold_step',
      '(build_last_step − build_cached) / (build_cold / 3), per round: the rerun step alone, the restore of the cached state left out',
    );
  } finally {
    await client.close().catch(() => {});
    await server.close().catch(() => {});
    opts.track(server, false);
    await opts.release(rt);
  }
}
