/**
 * Runs a Dockerfile in build VMs. Each stage gets a VM (a launch of the platform image, or of an
 * `ImageSource` base), `RUN` executes through the agent as the stage's USER in its WORKDIR with
 * its ENV and SHELL, `COPY`/`ADD` stream a tar of the selected files into the guest, and after
 * every step the VM is snapshotted into the **step cache**: key = SHA-256 of (the state before
 * the step — a cached snapshot id or the base —, the substituted instruction, and what it
 * depends on: the copied content's hash, the RUN's effective env, user and workdir). A hit
 * restores nothing yet: the build only moves its "current state" to the cached snapshot, and a
 * VM is restored from it when a later step misses (or at the end). So an unchanged Dockerfile
 * restores only its last step, and a changed last RUN reruns only that step.
 * ENV/ARG/USER/WORKDIR/SHELL/LABEL/EXPOSE/CMD/ENTRYPOINT change the host-side stage state
 * only (they are part of later steps' keys).
 * @module
 */
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import type { MachineType, ProcessSession, Runtime, BaseImage } from '@fastvm/runtime';
import tarStream from 'tar-stream';
import type { Logger } from 'pino';
import { defaultFirewall, type BuiltImageConfig } from '../../domain/index.js';
import type { Store } from '../../store/index.js';
import { isPlatformBase, type ImageConfig, type ImageSource } from '../image-source.js';
import type { NetworkManager } from '../network.js';
import {
  DockerfileError,
  expandWord,
  expandWords,
  keyValues,
  parseDockerfile,
  planStages,
  stageRef,
  type Instruction,
  type Stage,
} from './dockerfile.js';
import {
  hashEntries,
  packEntries,
  resolveCopy,
  type CopyEntry,
  type IgnoreMatcher,
} from './context.js';

/** PATH of the platform image (Debian's default, as Docker's debian images set it). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** A build that cannot go on; `message` is user-safe. */
export class BuildFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BuildFailure';
  }
}

export interface BuildHost {
  readonly runtime: Runtime;
  readonly network: NetworkManager;
  readonly store: Store;
  readonly logger: Logger;
  readonly images?: ImageSource;
  /** Most cache entries one org keeps (least recently used ones go first). */
  readonly cacheEntriesPerOrg: number;
  /** Limit of one RUN. */
  readonly runTimeoutMs: number;
}

export interface BuildJob {
  readonly buildId: string;
  readonly orgId: string;
  readonly dockerfile: string;
  /** Unpacked context (none: empty). */
  readonly contextDir?: string;
  readonly ignore: IgnoreMatcher;
  readonly buildArgs: Readonly<Record<string, string>>;
  readonly target?: string;
  readonly machine: MachineType;
  readonly diskGiB: number;
  /**
   * Registry credentials; with `host`, only sent for images on that registry (a Dockerfile's
   * other FROMs are pulled anonymously).
   */
  readonly registry?: { username?: string; password?: string; host?: string };
  readonly platform?: string;
  readonly signal: AbortSignal;
  /** Build output (step headers, RUN output). */
  log(text: string): void;
  /** Phase text while running. */
  progress(text: string): void;
  /** The image pull started/finished/failed (imports show it as the `pull` phase). */
  pull?(status: 'started' | 'completed' | 'skipped' | 'failed', message?: string): void;
  /** Called before a step snapshot is taken and after it is in the cache. */
  trackSnapshot(id: string, pending: boolean): Promise<void>;
  /** A build VM started (`running`) or was destroyed; the caller destroys what is left. */
  trackVm(vmId: string, running: boolean): void;
}

export interface BuildResult {
  /** A VM running the target stage's final state (the caller snapshots and destroys it). */
  readonly vmId: string;
  readonly config: BuiltImageConfig;
  readonly steps: { total: number; cached: number; ran: number };
}

interface StageState {
  env: Map<string, string>;
  args: Map<string, string>;
  workdir: string;
  user: string;
  shell: string[];
  labels: Map<string, string>;
  expose: Set<number>;
  cmd?: string[];
  entrypoint?: string[];
}

interface StageResult {
  /** Cache-chain id of the stage's final state (snapshot id or base key). */
  stateKey: string;
  /** Snapshot of that state, when it is one (else the base). */
  snapshotId?: string;
  base: { image?: BaseImage; key: string };
  config: StageState;
}

const SHELL_DEFAULT = ['/bin/sh', '-c'];

/** Runs `job`; throws `BuildFailure`/`DockerfileError` with user-safe messages. */
export async function runBuild(host: BuildHost, job: BuildJob): Promise<BuildResult> {
  const parsed = parseDockerfile(job.dockerfile);
  const plan = planStages(parsed, {
    buildArgs: job.buildArgs,
    ...(job.target !== undefined ? { target: job.target } : {}),
  });
  const results = new Map<number, StageResult>();
  const steps = { total: 0, cached: 0, ran: 0 };
  const runner = new Runner(host, job, parsed.escape, steps);
  try {
    for (const [n, idx] of plan.order.entries()) {
      const stage = plan.stages[idx]!;
      const last = n === plan.order.length - 1;
      const result = await runner.runStage(stage, plan.stages, results, plan.globalArgs, last);
      results.set(idx, result);
    }
    const final = results.get(plan.order[plan.order.length - 1]!)!;
    const vmId = await runner.finish(final);
    return { vmId, config: exportConfig(final.config), steps };
  } catch (err) {
    await runner.dispose();
    throw err;
  }
}

function exportConfig(s: StageState): BuiltImageConfig {
  return {
    env: Object.fromEntries(s.env),
    ...(s.cmd ? { cmd: s.cmd } : {}),
    ...(s.entrypoint ? { entrypoint: s.entrypoint } : {}),
    ...(s.workdir !== '/' ? { workdir: s.workdir } : {}),
    ...(s.user !== '' ? { user: s.user } : {}),
    ...(s.expose.size > 0 ? { exposedPorts: [...s.expose].sort((a, b) => a - b) } : {}),
    ...(s.labels.size > 0 ? { labels: Object.fromEntries(s.labels) } : {}),
  };
}

function sha(text: string): string {
  return crypto.createHash('sha256').update(text).digest('hex');
}

class Runner {
  /** The VM at the current state, if one runs. */
  private vm: string | undefined;
  /** The current state: a snapshot id, or undefined for the stage's base. */
  private snapshot: string | undefined;
  private base: { image?: BaseImage; key: string } = { key: '' };
  private stateKey = '';

  constructor(
    private readonly host: BuildHost,
    private readonly job: BuildJob,
    private readonly escape: string,
    private readonly steps: { total: number; cached: number; ran: number },
  ) {}

  private checkCancelled(): void {
    if (this.job.signal.aborted) throw new BuildFailure('the build was cancelled');
  }

  async runStage(
    stage: Stage,
    stages: readonly Stage[],
    done: ReadonlyMap<number, StageResult>,
    globalArgs: ReadonlyMap<string, string>,
    isTarget: boolean,
  ): Promise<StageResult> {
    await this.destroyVm();
    const label = stage.name ? ` (${stage.name})` : '';
    this.job.log(`#stage ${stage.index}${label}: FROM ${stage.image}\n`);
    const parentIdx = stageRef(stages, stage.image, stage.index);
    let state: StageState;
    if (parentIdx !== undefined && !/^\d+$/.test(stage.image)) {
      const parent = done.get(parentIdx)!;
      this.base = parent.base;
      this.snapshot = parent.snapshotId;
      this.stateKey = parent.stateKey;
      state = cloneState(parent.config);
    } else {
      const resolved = await this.resolveBase(stage);
      this.base = resolved.base;
      this.snapshot = undefined;
      this.stateKey = resolved.base.key;
      state = resolved.state;
    }
    state.args = new Map();

    for (const ins of stage.body) {
      this.checkCancelled();
      await this.instruction(ins, state, stages, done, globalArgs);
    }
    if (!isTarget) await this.destroyVm();
    return {
      stateKey: this.stateKey,
      ...(this.snapshot !== undefined ? { snapshotId: this.snapshot } : {}),
      base: this.base,
      config: state,
    };
  }

  private async resolveBase(stage: Stage): Promise<{
    base: { image?: BaseImage; key: string };
    state: StageState;
  }> {
    const machineKey = `${this.job.machine}:${this.job.diskGiB}`;
    const platform = stage.platform ?? this.job.platform;
    if (platform !== undefined && platform !== 'linux/amd64') {
      throw new DockerfileError(
        stage.from.line,
        `platform ${platform} is not supported (only linux/amd64)`,
      );
    }
    if (isPlatformBase(stage.image)) {
      this.job.pull?.('skipped', `${stage.image} is the platform's base image`);
      return {
        base: { key: `platform:${machineKey}` },
        state: newState({ env: { PATH: DEFAULT_PATH } }),
      };
    }
    if (!this.host.images) {
      throw new DockerfileError(
        stage.from.line,
        `FROM ${stage.image}: registry images are not available on this server (use fastvm/base or debian:bookworm)`,
      );
    }
    this.job.progress(`pulling ${stage.image}`);
    this.job.pull?.('started', `pulling ${stage.image}`);
    try {
      const reg = this.job.registry;
      const creds =
        reg?.username !== undefined &&
        (reg.host === undefined || registryOf(stage.image) === reg.host.toLowerCase());
      const resolved = await this.host.images.resolve(stage.image, {
        ...(creds ? { username: reg.username!, password: reg.password ?? '' } : {}),
        ...(platform !== undefined ? { platform } : {}),
        signal: this.job.signal,
        onProgress: (m) => {
          this.job.progress(m);
          this.job.log(`${m}\n`);
        },
      });
      this.job.pull?.('completed', `${stage.image} is ${resolved.digest}`);
      return {
        base: { image: resolved.baseImage, key: `image:${resolved.digest}:${machineKey}` },
        state: newState(resolved.config),
      };
    } catch (err) {
      this.checkCancelled();
      const msg = err instanceof Error ? err.message : String(err);
      this.job.pull?.('failed', `${stage.image}: ${msg}`);
      throw new DockerfileError(stage.from.line, `FROM ${stage.image}: ${msg}`);
    }
  }

  private vars(state: StageState): Map<string, string> {
    return new Map([...state.args, ...state.env]);
  }

  private async instruction(
    ins: Instruction,
    state: StageState,
    stages: readonly Stage[],
    done: ReadonlyMap<number, StageResult>,
    globalArgs: ReadonlyMap<string, string>,
  ): Promise<void> {
    const esc = this.escape;
    const vars = this.vars(state);
    switch (ins.keyword) {
      case 'ARG':
        for (const [k, v] of keyValues(ins, vars, esc, { allowBare: true })) {
          const value = Object.hasOwn(this.job.buildArgs, k)
            ? this.job.buildArgs[k]
            : (v ?? globalArgs.get(k));
          if (value !== undefined) state.args.set(k, value);
        }
        return;
      case 'ENV':
        for (const [k, v] of keyValues(ins, vars, esc, { legacy: true })) state.env.set(k, v ?? '');
        return;
      case 'LABEL':
        for (const [k, v] of keyValues(ins, vars, esc)) state.labels.set(k, v ?? '');
        return;
      case 'MAINTAINER':
        state.labels.set('maintainer', ins.args);
        return;
      case 'WORKDIR': {
        const dir = expandWord(ins.args, vars, esc, ins.line);
        state.workdir = path.posix.resolve(state.workdir, dir);
        return;
      }
      case 'USER':
        state.user = expandWord(ins.args, vars, esc, ins.line).trim();
        return;
      case 'SHELL':
        state.shell = [...ins.json!];
        return;
      case 'EXPOSE':
        for (const word of expandWords(ins.args, vars, esc, ins.line)) {
          const m = /^(\d{1,5})(?:-\d{1,5})?(?:\/(tcp|udp|sctp))?$/i.exec(word);
          const port = m ? Number(m[1]) : NaN;
          if (!(port >= 1 && port <= 65535)) {
            throw new DockerfileError(ins.line, `EXPOSE: invalid port ${JSON.stringify(word)}`);
          }
          state.expose.add(port);
        }
        return;
      case 'CMD':
        state.cmd = ins.json ? [...ins.json] : ins.args === '' ? [] : [...state.shell, ins.args];
        return;
      case 'ENTRYPOINT':
        state.entrypoint = ins.json
          ? [...ins.json]
          : ins.args === ''
            ? []
            : [...state.shell, ins.args];
        return;
      case 'RUN':
        return this.run(ins, state);
      case 'COPY':
      case 'ADD':
        return this.copy(ins, state, stages, done, globalArgs);
      default:
        throw new DockerfileError(ins.line, `${ins.keyword} is not supported by this builder`);
    }
  }

  // ---- steps and the cache ----------------------------------------------------------------------

  /**
   * One filesystem step: a cache hit moves the state to the cached snapshot; a miss runs `exec`
   * in a VM at the current state and snapshots it into the cache.
   */
  private async step(
    ins: Instruction,
    summary: string,
    keyInput: unknown,
    exec: (vmId: string) => Promise<void>,
  ): Promise<void> {
    this.steps.total++;
    const n = this.steps.total;
    const key = sha(`${this.stateKey}\n${JSON.stringify(keyInput)}`);
    this.job.progress(`step ${n}: ${summary}`);
    this.job.log(`#${n} line ${ins.line}: ${summary}\n`);
    const hit = await this.lookup(key);
    if (hit) {
      this.steps.cached++;
      this.job.log(`#${n} CACHED\n`);
      await this.destroyVm();
      this.snapshot = hit;
      this.stateKey = hit;
      return;
    }
    const vmId = await this.ensureVm();
    this.checkCancelled();
    const started = Date.now();
    await exec(vmId);
    this.checkCancelled();
    const snapId = crypto.randomUUID();
    await this.job.trackSnapshot(snapId, true);
    try {
      await this.host.runtime.snapshot(vmId, snapId);
    } catch (err) {
      await this.host.runtime.deleteSnapshot(snapId).catch(() => {});
      throw err;
    }
    const now = new Date().toISOString();
    await this.host.store.putBuildCacheEntry({
      orgId: this.job.orgId,
      key,
      snapshotId: snapId,
      createdAt: now,
      lastUsedAt: now,
    });
    await this.job.trackSnapshot(snapId, false);
    this.steps.ran++;
    this.job.log(`#${n} DONE ${((Date.now() - started) / 1000).toFixed(1)}s\n`);
    this.snapshot = snapId;
    this.stateKey = snapId;
    await this.evict().catch((err: unknown) =>
      this.host.logger.warn({ err, orgId: this.job.orgId }, 'build cache eviction failed'),
    );
  }

  /** The cached snapshot of `key`, if its entry exists and the runtime still has it. */
  private async lookup(key: string): Promise<string | undefined> {
    const { store, runtime } = this.host;
    const entry = await store.getBuildCacheEntry(this.job.orgId, key);
    if (!entry) return undefined;
    if (!(await runtime.hasSnapshot(entry.snapshotId).catch(() => false))) {
      await store.deleteBuildCacheEntry(this.job.orgId, key);
      return undefined;
    }
    await store.touchBuildCacheEntry(this.job.orgId, key, new Date().toISOString());
    return entry.snapshotId;
  }

  /** Drops the org's least recently used entries past the limit (their snapshots too). */
  private async evict(): Promise<void> {
    const { store, runtime, cacheEntriesPerOrg } = this.host;
    const entries = await store.listBuildCacheEntries(this.job.orgId);
    const excess = entries.length - cacheEntriesPerOrg;
    for (const e of entries.slice(0, Math.max(0, excess))) {
      if (e.snapshotId === this.snapshot) continue;
      await store.deleteBuildCacheEntry(e.orgId, e.key);
      await runtime.deleteSnapshot(e.snapshotId).catch(() => {});
    }
  }

  private async ensureVm(): Promise<string> {
    if (this.vm) return this.vm;
    this.checkCancelled();
    const { runtime, network } = this.host;
    const vmId = `bld-${crypto.randomUUID()}`;
    this.vm = vmId;
    this.job.trackVm(vmId, true);
    try {
      const net = await network.attach(vmId, defaultFirewall());
      const common = { id: vmId, ...(net.network ? { network: net.network } : {}) };
      if (this.snapshot !== undefined) {
        await runtime.restore({ ...common, snapshotId: this.snapshot });
      } else {
        await runtime.launch({
          ...common,
          machine: this.job.machine,
          diskGiB: this.job.diskGiB,
          ...(this.base.image ? { baseImage: this.base.image } : {}),
        });
      }
    } catch (err) {
      await this.destroyVm();
      throw err;
    }
    return vmId;
  }

  async destroyVm(): Promise<void> {
    const vm = this.vm;
    if (!vm) return;
    this.vm = undefined;
    await this.host.runtime.destroy(vm).catch((err: unknown) => {
      this.host.logger.warn({ err, vmId: vm }, 'build VM destroy failed');
    });
    await this.host.network.release(vm).catch(() => {});
    this.job.trackVm(vm, false);
  }

  async dispose(): Promise<void> {
    await this.destroyVm();
  }

  /** A VM at the target's final state (its WORKDIR exists). */
  async finish(final: StageResult): Promise<string> {
    this.checkCancelled();
    const started = Date.now();
    const fresh = this.vm === undefined;
    const vmId = await this.ensureVm();
    if (fresh) {
      const what = this.snapshot !== undefined ? 'restored the last step' : 'launched the base';
      this.job.log(`#final ${what} in ${Date.now() - started} ms\n`);
    }
    if (final.config.workdir !== '/') await this.mkdirWorkdir(vmId, final.config);
    return vmId;
  }

  // ---- RUN ----------------------------------------------------------------------------------

  private async run(ins: Instruction, state: StageState): Promise<void> {
    const argv = ins.json ? [...ins.json] : [...state.shell, ins.args];
    if (argv.length === 0) throw new DockerfileError(ins.line, 'RUN has an empty command');
    const env = Object.fromEntries(
      [...this.vars(state)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    const summary = `RUN ${ins.json ? JSON.stringify(ins.json) : ins.args}`;
    const keyInput = { k: 'RUN', argv, env, user: state.user, workdir: state.workdir };
    await this.step(ins, truncate(summary), keyInput, async (vmId) => {
      if (state.workdir !== '/') await this.mkdirWorkdir(vmId, state);
      const full =
        state.user === '' ? argv : [...asUser(state.user, env.HOME === undefined), ...argv];
      const code = await this.stream(vmId, full, env, state.workdir);
      if (code !== 0) {
        throw new DockerfileError(
          ins.line,
          `${truncate(summary, 200)} failed with exit code ${code}`,
        );
      }
    });
  }

  /** Runs `argv` in the guest, streaming its output to the build log; returns the exit code. */
  private async stream(
    vmId: string,
    argv: readonly string[],
    env: Record<string, string>,
    cwd: string,
    input?: Readable,
  ): Promise<number> {
    const { runtime } = this.host;
    let drained: (() => void) | undefined;
    const proc: ProcessSession = await runtime.openProcess(vmId, {
      argv,
      env,
      cwd,
      onStdout: (c) => this.job.log(c.toString('utf8')),
      onStderr: (c) => this.job.log(c.toString('utf8')),
      onInputDrain: () => drained?.(),
    });
    const kill = (): void => proc.kill(9);
    this.job.signal.addEventListener('abort', kill, { once: true });
    // Cancelled while the VM was starting or the command was being opened.
    if (this.job.signal.aborted) kill();
    const timer = setTimeout(kill, this.host.runTimeoutMs);
    try {
      if (input) {
        for await (const chunk of input) {
          if (this.job.signal.aborted) break;
          if (!proc.write(chunk as Buffer)) {
            await new Promise<void>((resolve) => {
              drained = resolve;
            });
          }
        }
      }
      proc.end();
      const exit = await proc.exited;
      this.checkCancelled();
      return exit.exitCode;
    } finally {
      clearTimeout(timer);
      this.job.signal.removeEventListener('abort', kill);
      input?.destroy();
    }
  }

  private async mkdirWorkdir(vmId: string, state: StageState): Promise<void> {
    const script =
      'd="$1"; u="$2"; [ -d "$d" ] && exit 0; mkdir -p -- "$d" || exit 1; ' +
      '[ -z "$u" ] || chown -- "$(owner "$u")" "$d"';
    const code = await this.stream(
      vmId,
      ['/bin/sh', '-c', `${OWNER_FN}\n${script}`, 'workdir', state.workdir, state.user],
      { PATH: DEFAULT_PATH },
      '/',
    );
    if (code !== 0) throw new BuildFailure(`could not create WORKDIR ${state.workdir}`);
  }

  // ---- COPY / ADD -----------------------------------------------------------------------------

  private async copy(
    ins: Instruction,
    state: StageState,
    stages: readonly Stage[],
    done: ReadonlyMap<number, StageResult>,
    globalArgs: ReadonlyMap<string, string>,
  ): Promise<void> {
    const vars = this.vars(state);
    const words = ins.json ? [...ins.json] : expandWords(ins.args, vars, this.escape, ins.line);
    if (words.length < 2) {
      throw new DockerfileError(
        ins.line,
        `${ins.keyword} needs at least one source and a destination`,
      );
    }
    const destWord = words[words.length - 1]!;
    const sources = words.slice(0, -1);
    let dest = path.posix.resolve(state.workdir, destWord);
    if ((destWord.endsWith('/') || destWord === '.' || destWord.endsWith('/.')) && dest !== '/')
      dest += '/';
    const chown =
      ins.flags.chown !== undefined ? expandWord(ins.flags.chown, vars, this.escape, ins.line) : '';
    let chmod: number | undefined;
    if (ins.flags.chmod !== undefined) {
      if (!/^[0-7]{3,4}$/.test(ins.flags.chmod)) {
        throw new DockerfileError(
          ins.line,
          `--chmod=${ins.flags.chmod}: only octal modes are supported`,
        );
      }
      chmod = parseInt(ins.flags.chmod, 8);
    }
    const summary = truncate(
      `${ins.keyword} ${ins.flags.from ? `--from=${ins.flags.from} ` : ''}${sources.join(' ')} ${destWord}`,
    );
    const keywordT = ins.keyword as 'COPY' | 'ADD';

    if (ins.flags.from !== undefined) {
      const ref = expandWord(ins.flags.from, globalArgs, this.escape, ins.line);
      const idx = stageRef(stages, ref, Number.MAX_SAFE_INTEGER)!;
      const from = done.get(idx);
      if (!from)
        throw new DockerfileError(ins.line, `COPY --from=${ref}: that stage was not built`);
      for (const s of sources) {
        if (/[*?[]/.test(s)) {
          throw new DockerfileError(
            ins.line,
            'COPY --from with a wildcard is not supported by this builder',
          );
        }
      }
      const keyInput = { k: ins.keyword, from: from.stateKey, sources, dest, chown, chmod };
      await this.step(ins, summary, keyInput, async (vmId) => {
        const tree = await fsp.mkdtemp(path.join(os.tmpdir(), 'fastvm-from-'));
        try {
          await this.exportFrom(ins, from, sources, tree);
          const entries = await resolveCopy({
            keyword: keywordT,
            line: ins.line,
            root: tree,
            ignore: () => false,
            sources: sources.map(
              (s) => path.posix.resolve(from.config.workdir, s).replace(/^\/+/, '') || '.',
            ),
            dest,
            ...(chmod !== undefined ? { chmod } : {}),
          });
          if (state.workdir !== '/') await this.mkdirWorkdir(vmId, state);
          await this.writeEntries(ins, vmId, entries, chown);
        } finally {
          await fsp.rm(tree, { recursive: true, force: true });
        }
      });
      return;
    }

    const root = this.job.contextDir;
    if (!root) {
      throw new DockerfileError(ins.line, `${ins.keyword}: the build has no context (upload one)`);
    }
    const entries = await resolveCopy({
      keyword: keywordT,
      line: ins.line,
      root,
      ignore: this.job.ignore,
      sources,
      dest,
      ...(chmod !== undefined ? { chmod } : {}),
    });
    const keyInput = {
      k: ins.keyword,
      dest,
      chown,
      chmod,
      content: await hashEntries(entries),
      workdir: state.workdir,
    };
    await this.step(ins, summary, keyInput, async (vmId) => {
      if (state.workdir !== '/') await this.mkdirWorkdir(vmId, state);
      await this.writeEntries(ins, vmId, entries, chown);
    });
  }

  /** Copies `sources` (absolute in the stage) out of `from`'s state into `tree`. */
  private async exportFrom(
    ins: Instruction,
    from: StageResult,
    sources: readonly string[],
    tree: string,
  ): Promise<void> {
    const { runtime } = this.host;
    const vmId = `bld-${crypto.randomUUID()}`;
    this.job.trackVm(vmId, true);
    try {
      if (from.snapshotId !== undefined) {
        await runtime.restore({ id: vmId, snapshotId: from.snapshotId });
      } else {
        await runtime.launch({
          id: vmId,
          machine: this.job.machine,
          diskGiB: this.job.diskGiB,
          ...(from.base.image ? { baseImage: from.base.image } : {}),
        });
      }
      const paths = sources.map(
        (s) => path.posix.resolve(from.config.workdir, s).replace(/^\/+/, '') || '.',
      );
      const extract = tarStream.extract();
      const unpacked = (async () => {
        for await (const entry of extract) {
          const h = entry.header;
          const name = path.posix.normalize(h.name).replace(/^\/+/, '');
          if (name.startsWith('..')) {
            entry.resume();
            continue;
          }
          const target = path.join(tree, name);
          await fsp.mkdir(path.dirname(target), { recursive: true });
          if (h.type === 'directory') {
            await fsp.mkdir(target, { recursive: true });
            await fsp.chmod(target, (h.mode ?? 0o755) & 0o7777);
            entry.resume();
          } else if (h.type === 'file') {
            const chunks: Buffer[] = [];
            for await (const c of entry) chunks.push(c as Buffer);
            await fsp.writeFile(target, Buffer.concat(chunks));
            await fsp.chmod(target, (h.mode ?? 0o644) & 0o7777);
          } else if (h.type === 'symlink') {
            await fsp.symlink(h.linkname ?? '', target).catch(() => {});
            entry.resume();
          } else {
            entry.resume();
          }
        }
      })();
      let stderr = '';
      const proc = await runtime.openProcess(vmId, {
        argv: ['tar', '-c', '-f', '-', '-C', '/', '--', ...paths],
        onStdout: (c) => extract.write(c),
        onStderr: (c) => {
          stderr += c.toString('utf8');
        },
      });
      proc.end();
      const exit = await proc.exited;
      (extract as unknown as NodeJS.WritableStream).end();
      await unpacked;
      if (exit.exitCode !== 0) {
        throw new DockerfileError(
          ins.line,
          `COPY --from: ${stderr.trim().split('\n')[0] ?? `tar exited with ${exit.exitCode}`}`,
        );
      }
    } finally {
      await runtime.destroy(vmId).catch(() => {});
      this.job.trackVm(vmId, false);
    }
  }

  /** Streams the entries into the guest (tar), applying `--chown`; archives are unpacked. */
  private async writeEntries(
    ins: Instruction,
    vmId: string,
    entries: readonly CopyEntry[],
    chown: string,
  ): Promise<void> {
    const plain = entries.filter((e) => e.type !== 'archive');
    const env = { PATH: DEFAULT_PATH };
    if (plain.length > 0) {
      const script =
        `${OWNER_FN}\nset -e; o="$1"; l=/tmp/.fastvm-copied-$$; cd /\n` +
        // GNU tar: existing directories keep their owner and mode. Minimal images' tar
        // (busybox) has no such option: there, a copied directory's mode lands on an existing one.
        'nd=; tar --help 2>&1 | grep -q -e --no-overwrite-dir && nd=--no-overwrite-dir\n' +
        'tar -x $nd -v -f - > "$l"\n' +
        'if [ -n "$o" ]; then o=$(owner "$o"); while IFS= read -r f; do chown -h -- "$o" "/${f%/}"; done < "$l"; fi\n' +
        'rm -f "$l"';
      const code = await this.stream(
        vmId,
        ['/bin/sh', '-c', script, 'copy', chown],
        env,
        '/',
        packEntries(plain),
      );
      if (code !== 0)
        throw new DockerfileError(
          ins.line,
          `${ins.keyword}: writing the files into the build VM failed (exit ${code})`,
        );
    }
    for (const a of entries.filter((e) => e.type === 'archive')) {
      const { createReadStream } = await import('node:fs');
      const head = Buffer.alloc(2);
      const fh = await fsp.open(a.src!, 'r');
      await fh.read(head, 0, 2, 0);
      await fh.close();
      let input: Readable = createReadStream(a.src!);
      if (head[0] === 0x1f && head[1] === 0x8b) input = input.pipe(zlib.createGunzip());
      const script =
        `${OWNER_FN}\nset -e; d="$1"; o="$2"; mkdir -p -- "$d"; l=/tmp/.fastvm-added-$$\n` +
        'tar -x -v -f - -C "$d" > "$l"\n' +
        'if [ -n "$o" ]; then o=$(owner "$o"); while IFS= read -r f; do chown -h -- "$o" "$d/${f%/}"; done < "$l"; fi\n' +
        'rm -f "$l"';
      const code = await this.stream(
        vmId,
        ['/bin/sh', '-c', script, 'add', a.dest, chown],
        env,
        '/',
        input,
      );
      if (code !== 0)
        throw new DockerfileError(
          ins.line,
          `ADD: unpacking ${path.basename(a.src!)} failed (exit ${code})`,
        );
    }
  }
}

/**
 * Shell function `owner SPEC` → `user:group` for chown: `name` → `name:` (its login group),
 * a bare uid → `uid:uid` (Docker's rule).
 */
const OWNER_FN =
  'owner() { case "$1" in *:*) echo "$1";; *[!0-9]*) echo "$1:";; *) echo "$1:$1";; esac; }';

/**
 * Runs the rest of argv as `spec` (`user[:group]`, names or ids) with setpriv (util-linux):
 * the user's groups when it exists in /etc/passwd, none otherwise; HOME from passwd unless
 * the stage sets it.
 */
function asUser(spec: string, setHome: boolean): string[] {
  const script =
    'u=$1; shift; case "$u" in *:*) g=${u#*:}; u=${u%%:*};; *) g=;; esac\n' +
    'if id -u -- "$u" >/dev/null 2>&1; then grp=--init-groups; uid=$(id -u -- "$u"); [ -n "$g" ] || g=$(id -g -- "$u");\n' +
    '  if [ "$SET_HOME" = 1 ]; then HOME=$(getent passwd "$uid" | cut -d: -f6); export HOME; fi\n' +
    'else grp=--clear-groups; uid=$u; [ -n "$g" ] || g=$u; fi\n' +
    'case "$g" in *[!0-9]*) g=$(getent group "$g" | cut -d: -f3); [ -n "$g" ] || { echo "unknown group" >&2; exit 1; };; esac\n' +
    'unset SET_HOME; exec setpriv --reuid="$uid" --regid="$g" $grp -- "$@"';
  return ['/usr/bin/env', `SET_HOME=${setHome ? 1 : 0}`, '/bin/sh', '-c', script, 'user', spec];
}

function newState(cfg: Partial<ImageConfig>): StageState {
  return {
    env: new Map(Object.entries(cfg.env ?? { PATH: DEFAULT_PATH })),
    args: new Map(),
    workdir: cfg.workingDir && cfg.workingDir !== '' ? cfg.workingDir : '/',
    user: cfg.user ?? '',
    shell: [...SHELL_DEFAULT],
    labels: new Map(Object.entries(cfg.labels ?? {})),
    expose: new Set(cfg.exposedPorts ?? []),
    ...(cfg.cmd ? { cmd: [...cfg.cmd] } : {}),
    ...(cfg.entrypoint ? { entrypoint: [...cfg.entrypoint] } : {}),
  };
}

function cloneState(s: StageState): StageState {
  return {
    env: new Map(s.env),
    args: new Map(),
    workdir: s.workdir,
    user: s.user,
    shell: [...s.shell],
    labels: new Map(s.labels),
    expose: new Set(s.expose),
    ...(s.cmd ? { cmd: [...s.cmd] } : {}),
    ...(s.entrypoint ? { entrypoint: [...s.entrypoint] } : {}),
  };
}

function truncate(s: string, max = 120): string {
  const one = s.replace(/\s+/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

/** The registry host of an image reference (`docker.io` when it names none). */
export function registryOf(ref: string): string {
  const first = ref.split('/')[0]!;
  const named =
    ref.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  return named ? first.toLowerCase() : 'docker.io';
}
