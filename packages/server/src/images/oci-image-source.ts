/**
 * `OciImageSource`: an image reference → a bootable `BaseImage`. The registry client
 * (`registry.ts`) resolves the reference to one platform's manifest; its digest names the cache
 * entry `<dataDir>/images/oci-<16 hex>/` ({`rootfs.ext4`, `image.json`}). A miss downloads the
 * layers (three at a time, each checked against its digest), applies them in order onto a staging
 * directory (`unpack.ts`), adds what the guest needs (`installGuestSupport`) and makes the ext4
 * (`makeExt4`), all in `.tmp-<id>-<pid>-<rand>/`, renamed into place at the end: a crash leaves
 * only a temp directory, removed at the next start. Concurrent resolves of one digest share the
 * work. Entries are never removed while the server runs (snapshots' disk chains end in them).
 * The platform's own base names (`isPlatformBase`) are never pulled.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { installGuestSupport, makeExt4 } from '@fastvm/runtime';
import {
  type ImageConfig,
  ImageError,
  type ImagePullOptions,
  type ImageSource,
  isPlatformBase,
  type ResolvedImage,
} from '../services/image-source.js';
import { formatReference, parseReference } from './reference.js';
import { type Descriptor, RegistryClient } from './registry.js';
import { applyLayer, type UnpackState } from './unpack.js';

/** Default cap on an image's compressed layers, and separately on its unpacked files. */
export const DEFAULT_MAX_IMAGE_BYTES = 16 * 2 ** 30;

const LAYER_TYPES = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.diff.tar',
]);

export interface OciImageSourceOptions {
  /** The server's data dir; images live in `<dataDir>/images`. */
  readonly dataDir: string;
  /** The static guest agent (`GuestImage.agent`). */
  readonly agent: string;
  /** Cap on compressed and on unpacked bytes (`FASTVM_IMAGE_MAX_BYTES`). */
  readonly maxBytes?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: (msg: string) => void;
}

/** `image.json` of a cache entry. */
interface ImageRecord {
  id: string;
  ref: string;
  digest: string;
  config: ImageConfig;
  sizeGiB: number;
  compressedBytes: number;
  unpackedBytes: number;
  createdAt: string;
}

export class OciImageSource implements ImageSource {
  readonly dir: string;
  readonly #opts: OciImageSourceOptions;
  readonly #building = new Map<string, Promise<ImageRecord>>();
  readonly #ready: Promise<void>;

  constructor(opts: OciImageSourceOptions) {
    this.#opts = opts;
    this.dir = path.join(opts.dataDir, 'images');
    this.#ready = this.#cleanup();
    this.#ready.catch(() => {});
  }

  /** Makes the directory and removes what a crashed build left (`.tmp-*` of dead processes). */
  async #cleanup(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o755 });
    await fs.chmod(this.dir, 0o755); // QEMU (confined) opens the files by path
    for (const name of await fs.readdir(this.dir)) {
      const m = /^\.tmp-.+-(\d+)-[0-9a-f]+$/.exec(name);
      if (!m) continue;
      const pid = Number(m[1]);
      if (pid === process.pid || alive(pid)) continue;
      await fs.rm(path.join(this.dir, name), { recursive: true, force: true });
    }
  }

  async resolve(ref: string, opts: ImagePullOptions = {}): Promise<ResolvedImage> {
    try {
      return await this.#resolve(ref, opts);
    } catch (err) {
      // A last guard: no message ever carries the password.
      if (opts.password && err instanceof Error && err.message.includes(opts.password)) {
        const code = err instanceof ImageError ? err.code : 'invalid';
        throw new ImageError(code, err.message.split(opts.password).join('***'));
      }
      throw err;
    }
  }

  async #resolve(ref: string, opts: ImagePullOptions): Promise<ResolvedImage> {
    if (isPlatformBase(ref)) {
      throw new ImageError(
        'invalid',
        `${ref} is the platform's own image: launch without a base image (nothing to pull)`,
      );
    }
    const parsed = parseReference(ref);
    await this.#ready;
    const client = new RegistryClient(parsed, {
      username: opts.username,
      password: opts.password,
      signal: opts.signal,
      env: this.#opts.env,
    });
    const platform = opts.platform ?? 'linux/amd64';
    if (!/^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/.test(platform)) {
      throw new ImageError(
        'invalid',
        `platform ${JSON.stringify(platform)} is not os/arch[/variant]`,
      );
    }
    const { manifest, digest } = await client.imageManifest(parsed.digest ?? parsed.tag!, platform);
    const id = `oci-${digest.slice('sha256:'.length, 'sha256:'.length + 16)}`;
    const finalDir = path.join(this.dir, id);
    let pulledBytes = 0;
    let rec = await readRecord(finalDir);
    if (!rec) {
      let p = this.#building.get(id);
      if (!p) {
        p = this.#build(client, id, formatReference(parsed), digest, manifest, opts, (n) => {
          pulledBytes += n;
        });
        this.#building.set(id, p);
        void p.then(
          () => this.#building.delete(id),
          () => this.#building.delete(id),
        );
      }
      rec = await p;
    }
    return {
      baseImage: { id, rootfsPath: path.join(finalDir, 'rootfs.ext4') },
      config: rec.config,
      digest,
      pulledBytes,
    };
  }

  async #build(
    client: RegistryClient,
    id: string,
    ref: string,
    digest: string,
    manifest: { config: Descriptor; layers: readonly Descriptor[] },
    opts: ImagePullOptions,
    onPulled: (n: number) => void,
  ): Promise<ImageRecord> {
    const max = this.#opts.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES;
    const progress = opts.onProgress ?? (() => {});
    for (const l of manifest.layers) {
      if (!LAYER_TYPES.has(l.mediaType)) {
        throw new ImageError(
          'invalid',
          `${client.name}: layer type ${l.mediaType} is not supported`,
        );
      }
    }
    const compressed = manifest.layers.reduce((n, l) => n + l.size, 0);
    if (compressed > max) {
      throw new ImageError(
        'too_large',
        `${client.name} is ${mib(compressed)} MiB compressed, over the limit of ${mib(max)} MiB`,
      );
    }
    const config = parseConfig(await client.smallBlob(manifest.config));
    const t0 = Date.now();
    const work = path.join(
      this.dir,
      `.tmp-${id}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`,
    );
    const root = path.join(work, 'root');
    await fs.mkdir(root, { recursive: true, mode: 0o755 });
    await fs.chmod(root, 0o755);
    try {
      const n = manifest.layers.length;
      let got = 0;
      // Downloads run ahead (three at a time); layers are applied in order as they arrive.
      const downloads: Array<Promise<string>> = [];
      let next = 0;
      const starters: Array<() => void> = [];
      const fetchLayer = async (i: number): Promise<string> => {
        const file = path.join(work, `layer-${i}`);
        await client.downloadBlob(manifest.layers[i]!, file, max, (b) => {
          got += b;
          onPulled(b);
        });
        return file;
      };
      for (let i = 0; i < n; i++) {
        let start!: () => void;
        const gate = new Promise<void>((r) => (start = r));
        starters.push(start);
        const p = gate.then(() => fetchLayer(i));
        p.catch(() => {});
        downloads.push(p);
      }
      const launchNext = () => {
        if (next < n) starters[next++]!();
      };
      for (let i = 0; i < Math.min(3, n); i++) launchNext();
      const state: UnpackState = { bytes: 0, maxBytes: max, skipped: 0 };
      let waitMs = 0;
      let unpackMs = 0;
      for (let i = 0; i < n; i++) {
        const tw = Date.now();
        const file = await downloads[i]!;
        waitMs += Date.now() - tw;
        launchNext();
        progress(`pull: layer ${i + 1}/${n}, ${mib(got)} of ${mib(compressed)} MiB`);
        const tu = Date.now();
        await applyLayer(file, root, state);
        unpackMs += Date.now() - tu;
        await fs.rm(file, { force: true });
        opts.signal?.throwIfAborted();
      }
      progress(`rootfs: ${mib(state.bytes)} MiB unpacked, making the ext4`);
      await installGuestSupport(root, { agent: this.#opts.agent });
      const te = Date.now();
      const sizeGiB = await makeExt4(root, path.join(work, 'rootfs.ext4'), opts.signal);
      const ext4Ms = Date.now() - te;
      await fs.rm(root, { recursive: true, force: true });
      const rec: ImageRecord = {
        id,
        ref,
        digest,
        config,
        sizeGiB,
        compressedBytes: compressed,
        unpackedBytes: state.bytes,
        createdAt: new Date().toISOString(),
      };
      await fs.writeFile(path.join(work, 'image.json'), JSON.stringify(rec, null, 2));
      await fs.chmod(work, 0o755);
      const finalDir = path.join(this.dir, id);
      try {
        await fs.rename(work, finalDir);
      } catch {
        // Another process made the same image first: use that one.
        await fs.rm(work, { recursive: true, force: true });
        const other = await readRecord(finalDir);
        if (!other) throw new ImageError('invalid', `image cache entry ${id} is unreadable`);
        return other;
      }
      this.#opts.log?.(
        `images: ${ref} (${digest}) → ${id}: ${mib(compressed)} MiB pulled, ${mib(state.bytes)} MiB unpacked` +
          `${state.skipped ? `, ${state.skipped} device/fifo entries skipped` : ''} in ${Date.now() - t0} ms ` +
          `(waiting for downloads ${waitMs}, unpacking ${unpackMs}, mke2fs ${ext4Ms})`,
      );
      return rec;
    } catch (err) {
      await fs.rm(work, { recursive: true, force: true });
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (err instanceof ImageError) throw err;
      throw new ImageError(
        'invalid',
        `${client.name}: could not make a root filesystem: ${(err as Error).message}`,
      );
    }
  }
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readRecord(dir: string): Promise<ImageRecord | undefined> {
  try {
    const rec = JSON.parse(await fs.readFile(path.join(dir, 'image.json'), 'utf8')) as ImageRecord;
    await fs.access(path.join(dir, 'rootfs.ext4'));
    return rec;
  } catch {
    return undefined;
  }
}

/** The parts of an image config we carry (`config` of the OCI/Docker image config). */
export function parseConfig(blob: Buffer): ImageConfig {
  let j: { config?: Record<string, unknown> };
  try {
    j = JSON.parse(blob.toString('utf8')) as typeof j;
  } catch {
    throw new ImageError('invalid', 'the image config is not JSON');
  }
  const c = (j.config ?? {}) as {
    Env?: unknown;
    Cmd?: unknown;
    Entrypoint?: unknown;
    WorkingDir?: unknown;
    User?: unknown;
    ExposedPorts?: unknown;
    Labels?: unknown;
  };
  const strings = (v: unknown): string[] | undefined =>
    Array.isArray(v) && v.every((s) => typeof s === 'string') ? (v as string[]) : undefined;
  const env: Record<string, string> = {};
  for (const kv of strings(c.Env) ?? []) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const ports =
    c.ExposedPorts && typeof c.ExposedPorts === 'object'
      ? Object.keys(c.ExposedPorts)
          .map((k) => parseInt(k, 10))
          .filter((p) => p > 0 && p < 65536)
      : [];
  const labels =
    c.Labels && typeof c.Labels === 'object'
      ? Object.fromEntries(
          Object.entries(c.Labels as Record<string, unknown>).filter(
            (e): e is [string, string] => typeof e[1] === 'string',
          ),
        )
      : {};
  const cmd = strings(c.Cmd);
  const entrypoint = strings(c.Entrypoint);
  return {
    env,
    ...(cmd ? { cmd } : {}),
    ...(entrypoint ? { entrypoint } : {}),
    ...(typeof c.WorkingDir === 'string' && c.WorkingDir ? { workingDir: c.WorkingDir } : {}),
    ...(typeof c.User === 'string' && c.User ? { user: c.User } : {}),
    ...(ports.length ? { exposedPorts: ports } : {}),
    ...(Object.keys(labels).length ? { labels } : {}),
  };
}
