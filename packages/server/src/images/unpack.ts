/**
 * Applies image layers (tar, gzip or zstd; told apart by their first bytes) in order onto a
 * staging directory, as a container runtime stacks them:
 *
 * - whiteouts: `.wh.<name>` removes `<name>` of the layers below; `.wh..wh..opq` empties its
 *   directory of what the layers below put there (entries of the same layer stay);
 * - no entry lands outside the root: `..` components are refused, and symlinks met on the way to
 *   an entry are resolved inside the root as a chroot would (an absolute target starts at the
 *   root, `..` stops there); the entry itself is replaced, never followed;
 * - regular files, directories, symlinks and hard links (to an entry already in the root) are
 *   made with the tar's mode (setuid/setgid/sticky included), owner and mtime; device nodes,
 *   fifos and sockets are skipped (the agent mounts devtmpfs on /dev);
 * - the uncompressed total is capped (`too_large`).
 *
 * zstd goes through Debian's `zstd` (Node 20's zlib has none). tar parsing is `tar-stream`.
 * Where the time goes (a Debian root, 8,500 entries, 177 MiB): parsing ~1 s; creating the
 * inodes on the host's file system the rest (`open(O_CREAT)` ~1.2 ms each on the loaded test
 * host's ext4). Synchronous calls were tried: no faster there, and they hold the event loop.
 * @module
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { ImageError } from '../services/image-source.js';

/** One entry's data stream (tar-stream's `Source`). */
type Entry = tar.ExtractEvents['entry'][1];

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';
const MAX_LINKS = 40;

export interface UnpackState {
  /** Uncompressed bytes written so far (all layers). */
  bytes: number;
  /** Cap on `bytes`. */
  readonly maxBytes: number;
  /** Entries skipped (devices, fifos, sockets). */
  skipped: number;
}

/** Splits a tar path into its components; refuses `..` and empty paths. */
export function entryParts(name: string): string[] {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) {
    throw new ImageError(
      'invalid',
      `layer entry ${JSON.stringify(name.slice(0, 200))} leaves the root`,
    );
  }
  return parts;
}

/**
 * The real path of directory `parts` inside `root`, following symlinks as if `root` were `/`
 * (never leaving it) and creating missing directories when `create`. Returns undefined if a
 * component is missing (and not created) or is not a directory.
 */
export async function resolveDir(
  root: string,
  parts: readonly string[],
  create: boolean,
): Promise<string | undefined> {
  const stack = [...parts].reverse();
  const cur: string[] = [];
  let links = 0;
  while (stack.length) {
    const p = stack.pop()!;
    if (p === '' || p === '.') continue;
    if (p === '..') {
      cur.pop();
      continue;
    }
    const at = path.join(root, ...cur, p);
    const st = await fsp.lstat(at).catch(() => undefined);
    if (!st) {
      if (!create) return undefined;
      await fsp.mkdir(at, { mode: 0o755 });
      cur.push(p);
    } else if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) {
        throw new ImageError('invalid', `too many symlinks under ${path.join('/', ...cur, p)}`);
      }
      const target = await fsp.readlink(at);
      if (target.startsWith('/')) cur.length = 0;
      stack.push(...target.split('/').reverse());
    } else if (st.isDirectory()) {
      cur.push(p);
    } else {
      if (!create) return undefined;
      // A file where a directory is needed: the upper layer's directory replaces it.
      await fsp.rm(at, { force: true });
      await fsp.mkdir(at, { mode: 0o755 });
      cur.push(p);
    }
  }
  return path.join(root, ...cur);
}

/** Decompressed tar stream of a layer file, by its magic bytes. */
async function openLayer(file: string): Promise<{ stream: Readable; done: Promise<void> }> {
  const fh = await fsp.open(file, 'r');
  const magic = Buffer.alloc(4);
  await fh.read(magic, 0, 4, 0);
  await fh.close();
  if (magic[0] === 0x1f && magic[1] === 0x8b) {
    const s = fs.createReadStream(file).pipe(zlib.createGunzip());
    return { stream: s, done: Promise.resolve() };
  }
  if (magic.readUInt32LE(0) === 0xfd2fb528) {
    const child = spawn('zstd', ['-dc', '--no-progress', file], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()).slice(-2000));
    const done = new Promise<void>((resolve, reject) => {
      child.on('error', (e) =>
        reject(new ImageError('invalid', `zstd layers need the zstd program: ${e.message}`)),
      );
      child.on('close', (code) =>
        code === 0 || code === null
          ? resolve()
          : reject(new ImageError('invalid', `a zstd layer does not decompress: ${err.trim()}`)),
      );
    });
    done.catch(() => {});
    return { stream: child.stdout, done };
  }
  return { stream: fs.createReadStream(file), done: Promise.resolve() };
}

/** Applies one layer file onto `root`. */
export async function applyLayer(file: string, root: string, state: UnpackState): Promise<void> {
  const { stream, done } = await openLayer(file);
  const extract = tar.extract();
  /** Paths (relative, resolved) this layer made: an opaque marker keeps them. */
  const added = new Set<string>();
  const layer: LayerCtx = { added, dirs: new Map(), state };
  stream.on('error', (err: Error) => extract.destroy(err));
  stream.pipe(extract);
  try {
    for await (const entry of extract) {
      await applyEntry(root, entry.header, entry, layer);
      entry.resume(); // drains what applyEntry did not read
    }
    await done;
  } catch (err) {
    stream.destroy();
    extract.destroy();
    await done.catch(() => {});
    if (err instanceof ImageError) throw err;
    throw new ImageError(
      'invalid',
      `a layer is not a valid tar archive: ${(err as Error).message}`,
    );
  }
}

/** One layer's application: what it made, and the directories it resolved (a cache). */
interface LayerCtx {
  readonly added: Set<string>;
  /**
   * Parent paths as written in the tar → their resolved real directory. Cleared whenever a
   * directory or symlink is removed or replaced (whiteouts, opaque markers, type changes).
   */
  readonly dirs: Map<string, string>;
  readonly state: UnpackState;
}

async function parentDir(root: string, parts: readonly string[], layer: LayerCtx): Promise<string> {
  const key = parts.join('/');
  let dir = layer.dirs.get(key);
  if (!dir) {
    dir = (await resolveDir(root, parts, true))!;
    layer.dirs.set(key, dir);
  }
  return dir;
}

const AS_ROOT = process.getuid?.() === 0;

async function applyEntry(
  root: string,
  h: tar.Header,
  body: Entry,
  layer: LayerCtx,
): Promise<void> {
  const { added, state } = layer;
  const parts = entryParts(h.name);
  if (parts.length === 0) return; // the root itself
  const base = parts[parts.length - 1]!;
  const parentParts = parts.slice(0, -1);
  if (base === OPAQUE) {
    layer.dirs.clear();
    const dir = await resolveDir(root, parentParts, true);
    const rel = path.relative(root, dir!);
    for (const child of await fsp.readdir(dir!)) {
      const childRel = path.join(rel, child);
      if (!added.has(childRel))
        await fsp.rm(path.join(dir!, child), { recursive: true, force: true });
    }
    return;
  }
  if (base.startsWith(WH)) {
    layer.dirs.clear();
    const dir = await resolveDir(root, parentParts, false);
    const name = base.slice(WH.length);
    if (dir && name && name !== '.' && name !== '..') {
      await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    }
    return;
  }
  const dir = await parentDir(root, parentParts, layer);
  const target = path.join(dir, base);
  const rel = path.relative(root, target);
  const mode = (h.mode ?? 0o644) & 0o7777;
  const existing = await fsp.lstat(target).catch(() => undefined);
  // Replacing a directory or a symlink changes what cached parent paths resolve to.
  if (
    existing &&
    (existing.isSymbolicLink() || (existing.isDirectory() && h.type !== 'directory'))
  ) {
    layer.dirs.clear();
  }
  switch (h.type) {
    case 'directory': {
      if (existing && !existing.isDirectory())
        await fsp.rm(target, { recursive: true, force: true });
      if (!existing?.isDirectory()) await fsp.mkdir(target, { mode: 0o755 });
      break;
    }
    case 'file':
    case 'contiguous-file': {
      if (existing) await fsp.rm(target, { recursive: true, force: true });
      const size = h.size ?? 0;
      state.bytes += size;
      if (state.bytes > state.maxBytes) {
        throw new ImageError('too_large', `the image unpacks to more than ${state.maxBytes} bytes`);
      }
      // 'wx': never through a symlink or onto something that appeared meanwhile.
      await writeBody(body, target);
      break;
    }
    case 'symlink': {
      if (existing) await fsp.rm(target, { recursive: true, force: true });
      await fsp.symlink(h.linkname ?? '', target);
      break;
    }
    case 'link': {
      const linkParts = entryParts(h.linkname ?? '');
      const from = await resolveDir(root, linkParts.slice(0, -1), false);
      const src = from && path.join(from, linkParts[linkParts.length - 1] ?? '');
      const st = src ? await fsp.lstat(src).catch(() => undefined) : undefined;
      if (!src || !st || st.isDirectory()) {
        throw new ImageError('invalid', `hard link ${JSON.stringify(h.name)} names a missing file`);
      }
      if (existing) await fsp.rm(target, { recursive: true, force: true });
      await fsp.link(src, target);
      added.add(rel);
      return; // shares the inode: owner and mode are the target's
    }
    default:
      // character/block devices, fifos, sockets, unknown types: not made on the host.
      state.skipped++;
      return;
  }
  added.add(rel);
  // What we just made as root is root's already.
  if (existing || !AS_ROOT || h.uid || h.gid) await fsp.lchown(target, h.uid ?? 0, h.gid ?? 0);
  if (h.type !== 'symlink') await fsp.chmod(target, mode);
  if (h.mtime) await fsp.lutimes(target, h.mtime, h.mtime).catch(() => {});
}

/** Writes an entry's data to a new file (`wx`: never through a symlink or onto anything). */
function writeBody(body: Entry, target: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const out = fs.createWriteStream(target, { flags: 'wx', mode: 0o600 });
    out.on('error', reject);
    out.on('finish', resolve);
    body.on('error', (err: Error) => {
      out.destroy();
      reject(err);
    });
    body.pipe(out);
  });
}
