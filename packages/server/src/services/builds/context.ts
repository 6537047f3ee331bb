/**
 * Build contexts on the host: unpack an uploaded tar.gz or ZIP into a private directory (no
 * entry may leave it, sizes capped), read `.dockerignore`, resolve a `COPY`/`ADD`'s sources
 * (globs, directories, symlinks that must stay inside the context) into a list of entries with
 * their guest paths, hash them for the step cache, and pack them as a tar stream for the guest.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import picomatch from 'picomatch';
import tarStream from 'tar-stream';
import yauzl from 'yauzl';
import { DockerfileError } from './dockerfile.js';

/** The context was refused (too big, malformed, an entry escaping it). User-safe message. */
export class ContextError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContextError';
  }
}

/** Refuses archive entry names that are absolute or climb out. Returns the clean name. */
function safeEntryName(name: string): string | undefined {
  const clean = path.posix.normalize(name.replace(/\\/g, '/')).replace(/^(\.\/)+/, '');
  if (clean === '.' || clean === '' || clean === './') return undefined;
  if (path.posix.isAbsolute(clean) || clean === '..' || clean.startsWith('../')) {
    throw new ContextError(`the build context has an entry outside it: ${JSON.stringify(name)}`);
  }
  return clean.replace(/\/+$/, '');
}

/** Unpacks a tar (gzip or plain) into `dest`, at most `maxBytes` of file data. */
export async function extractTar(file: string, dest: string, maxBytes: number): Promise<number> {
  const head = Buffer.alloc(2);
  const fh = await fsp.open(file, 'r');
  try {
    await fh.read(head, 0, 2, 0);
  } finally {
    await fh.close();
  }
  const gz = head[0] === 0x1f && head[1] === 0x8b;
  const extract = tarStream.extract();
  let total = 0;
  const done = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      const name = safeEntryName(h.name);
      const target = name === undefined ? dest : path.join(dest, name);
      if (name !== undefined) await fsp.mkdir(path.dirname(target), { recursive: true });
      if (h.type === 'directory') {
        await fsp.mkdir(target, { recursive: true, mode: 0o755 });
        await fsp.chmod(target, ((h.mode ?? 0o755) & 0o7777) | 0o700);
        entry.resume();
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        if (name === undefined) throw new ContextError('a file entry without a name');
        total += h.size ?? 0;
        if (total > maxBytes) {
          throw new ContextError(`the build context unpacks to more than ${maxBytes} bytes`);
        }
        await fsp.rm(target, { force: true, recursive: true });
        await pipeline(entry, fs.createWriteStream(target, { mode: (h.mode ?? 0o644) & 0o777 }));
        await fsp.chmod(target, (h.mode ?? 0o644) & 0o7777);
      } else if (h.type === 'symlink' && name !== undefined) {
        await fsp.rm(target, { force: true, recursive: true });
        await fsp.symlink(h.linkname ?? '', target);
        entry.resume();
      } else if (h.type === 'link' && name !== undefined) {
        const from = safeEntryName(h.linkname ?? '');
        if (from === undefined) throw new ContextError('a hard link without a target');
        await fsp.rm(target, { force: true, recursive: true });
        await fsp.copyFile(path.join(dest, from), target);
        entry.resume();
      } else {
        entry.resume(); // devices, fifos, pax headers handled by tar-stream: skipped
      }
    }
  })();
  const source = fs.createReadStream(file);
  const feeding = gz ? pipeline(source, zlib.createGunzip(), extract) : pipeline(source, extract);
  try {
    await Promise.all([feeding, done]);
  } catch (err) {
    source.destroy();
    extract.destroy();
    if (err instanceof ContextError) throw err;
    throw new ContextError(
      `the build context is not a valid tar${gz ? '.gz' : ''} archive: ${(err as Error).message}`,
    );
  }
  return total;
}

/** Unpacks a ZIP into `dest`, at most `maxBytes` of file data. */
export async function extractZip(file: string, dest: string, maxBytes: number): Promise<number> {
  let zip: yauzl.ZipFile;
  try {
    zip = await new Promise<yauzl.ZipFile>((resolve, reject) =>
      yauzl.open(file, { lazyEntries: true, autoClose: true, strictFileNames: false }, (err, z) =>
        err ? reject(err) : resolve(z),
      ),
    );
  } catch (err) {
    throw new ContextError(
      `the build context is not a valid ZIP archive: ${(err as Error).message}`,
    );
  }
  let total = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      zip.on('error', reject);
      zip.on('end', () => resolve());
      zip.on('entry', (entry: yauzl.Entry) => {
        void (async () => {
          const name = safeEntryName(entry.fileName);
          if (name === undefined) return zip.readEntry();
          const target = path.join(dest, name);
          const mode = (entry.externalFileAttributes >>> 16) & 0xffff;
          const isDir = entry.fileName.endsWith('/') || (mode & 0o170000) === 0o040000;
          const isLink = (mode & 0o170000) === 0o120000;
          await fsp.mkdir(path.dirname(target), { recursive: true });
          if (isDir) {
            await fsp.mkdir(target, { recursive: true });
            return zip.readEntry();
          }
          total += entry.uncompressedSize;
          if (total > maxBytes) {
            throw new ContextError(`the build context unpacks to more than ${maxBytes} bytes`);
          }
          const stream = await new Promise<Readable>((res, rej) =>
            zip.openReadStream(entry, (err, s) => (err ? rej(err) : res(s))),
          );
          await fsp.rm(target, { force: true, recursive: true });
          if (isLink) {
            const chunks: Buffer[] = [];
            for await (const c of stream) chunks.push(c as Buffer);
            await fsp.symlink(Buffer.concat(chunks).toString('utf8'), target);
          } else {
            await pipeline(stream, fs.createWriteStream(target));
            const perm = mode & 0o7777;
            await fsp.chmod(target, perm !== 0 ? perm : 0o644);
          }
          zip.readEntry();
        })().catch(reject);
      });
      zip.readEntry();
    });
  } catch (err) {
    zip.close();
    if (err instanceof ContextError) throw err;
    throw new ContextError(
      `the build context is not a valid ZIP archive: ${(err as Error).message}`,
    );
  }
  return total;
}

// ---- .dockerignore ----------------------------------------------------------------------------

/** Whether a context-relative path (`a/b`) is excluded. */
export type IgnoreMatcher = (rel: string) => boolean;

/**
 * `.dockerignore` rules: one pattern a line, `#` comments, `!` re-includes, the last matching
 * rule wins, and a rule matching a directory matches everything below it.
 */
export function parseDockerignore(text: string): IgnoreMatcher {
  const rules: Array<{ negate: boolean; match: (s: string) => boolean }> = [];
  for (const rawLine of text.split(/\r?\n/)) {
    let line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    let negate = false;
    if (line.startsWith('!')) {
      negate = true;
      line = line.slice(1).trim();
    }
    let pattern = path.posix
      .normalize(line.replace(/\\/g, '/'))
      .replace(/^\/+/, '')
      .replace(/\/+$/, '');
    if (pattern === '.' || pattern === '') pattern = '**';
    rules.push({ negate, match: picomatch(pattern, { dot: true }) });
  }
  if (rules.length === 0) return () => false;
  return (rel: string) => {
    const parts = rel.split('/');
    let excluded = false;
    for (const rule of rules) {
      let hit = false;
      for (let k = parts.length; k >= 1 && !hit; k--) hit = rule.match(parts.slice(0, k).join('/'));
      if (hit) excluded = !rule.negate;
    }
    return excluded;
  };
}

// ---- COPY/ADD sources ---------------------------------------------------------------------------

/** One thing to create in the guest. */
export interface CopyEntry {
  /** Absolute guest path. */
  readonly dest: string;
  readonly type: 'file' | 'directory' | 'symlink' | 'archive';
  /** Host file (file, archive). */
  readonly src?: string;
  readonly mode: number;
  readonly size: number;
  readonly linkname?: string;
  readonly mtime: Date;
}

export interface CopyRequest {
  readonly keyword: 'COPY' | 'ADD';
  readonly line: number;
  /** Context root (already unpacked), or a stage's exported tree for --from. */
  readonly root: string;
  readonly ignore: IgnoreMatcher;
  readonly sources: readonly string[];
  /** Absolute guest destination (joined with WORKDIR); a trailing `/` is kept. */
  readonly dest: string;
  /** `--chmod` (octal), applied to files and directories copied. */
  readonly chmod?: number;
}

const GLOB_RE = /[*?[]/;

/** Resolves a COPY/ADD into entries; throws `DockerfileError` naming the line. */
export async function resolveCopy(req: CopyRequest): Promise<CopyEntry[]> {
  const fail = (msg: string): never => {
    throw new DockerfileError(req.line, msg);
  };
  const realRoot = await fsp.realpath(req.root);
  const inside = (p: string): boolean => p === realRoot || p.startsWith(realRoot + path.sep);
  const matches: Array<{ rel: string; abs: string }> = [];
  let all: string[] | undefined;
  for (const source of req.sources) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
      fail(`${req.keyword} from a URL (${source}) is not supported by this builder`);
    }
    const norm = path.posix.normalize(source.replace(/\\/g, '/'));
    if (norm === '..' || norm.startsWith('../')) {
      fail(`${req.keyword} ${source}: the path is outside the build context`);
    }
    const rel = norm.replace(/^\/+/, '').replace(/\/+$/, '').replace(/^\.$/, '');
    if (GLOB_RE.test(rel)) {
      all ??= await walk(req.root, req.ignore);
      const isMatch = picomatch(rel, { dot: true });
      const hits = all.filter((p) => isMatch(p));
      if (hits.length === 0) fail(`${req.keyword} ${source}: no files in the build context match`);
      for (const h of hits) {
        // A match inside a directory that also matched is copied with it.
        if (hits.some((o) => o !== h && h.startsWith(o + '/'))) continue;
        matches.push({ rel: h, abs: path.join(req.root, h) });
      }
      continue;
    }
    const abs = path.join(req.root, rel);
    let real: string;
    try {
      real = await fsp.realpath(abs);
    } catch {
      // A dangling or escaping symlink, or nothing there.
      const link = await fsp.lstat(abs).catch(() => undefined);
      if (link?.isSymbolicLink()) {
        fail(`${req.keyword} ${source}: a symlink in the build context points outside it`);
      }
      return fail(`${req.keyword} ${source}: not found in the build context`);
    }
    if (!inside(real))
      fail(`${req.keyword} ${source}: a symlink in the build context points outside it`);
    if (rel !== '' && req.ignore(rel)) {
      fail(`${req.keyword} ${source}: not found in the build context (excluded by .dockerignore)`);
    }
    matches.push({ rel, abs: real });
  }
  const destIsDir = req.dest.endsWith('/');
  const dest = req.dest === '/' ? '/' : req.dest.replace(/\/+$/, '');
  if (matches.length > 1 && !destIsDir) {
    fail(`${req.keyword} with more than one source needs a destination directory ending in /`);
  }
  const out: CopyEntry[] = [];
  for (const m of matches) {
    const st = await fsp.stat(m.abs);
    if (st.isDirectory()) {
      out.push(entry(dest, 'directory', st, req.chmod));
      for (const sub of await walk(m.abs, (p) => req.ignore(joinRel(m.rel, p)))) {
        const abs = path.join(m.abs, sub);
        const lst = await fsp.lstat(abs);
        const to = path.posix.join(dest, sub);
        if (lst.isSymbolicLink()) {
          out.push({
            dest: to,
            type: 'symlink',
            mode: 0o777,
            size: 0,
            linkname: await fsp.readlink(abs),
            mtime: lst.mtime,
          });
        } else if (lst.isDirectory()) {
          out.push(entry(to, 'directory', lst, req.chmod));
        } else if (lst.isFile()) {
          out.push({ ...entry(to, 'file', lst, req.chmod), src: abs });
        }
      }
    } else if (st.isFile()) {
      if (req.keyword === 'ADD' && (await isTarArchive(m.abs))) {
        out.push({
          dest,
          type: 'archive',
          src: m.abs,
          mode: 0o755,
          size: st.size,
          mtime: st.mtime,
        });
        continue;
      }
      const to = destIsDir ? path.posix.join(dest, path.posix.basename(m.rel || m.abs)) : dest;
      out.push({ ...entry(to, 'file', st, req.chmod), src: m.abs });
    }
  }
  return out;
}

function joinRel(base: string, sub: string): string {
  return base === '' ? sub : `${base}/${sub}`;
}

function entry(dest: string, type: 'file' | 'directory', st: fs.Stats, chmod?: number): CopyEntry {
  return {
    dest,
    type,
    mode: chmod ?? st.mode & 0o7777,
    size: type === 'file' ? st.size : 0,
    mtime: st.mtime,
  };
}

/** Every path below `root` (relative, `/`-separated, sorted), minus ignored ones. */
async function walk(root: string, ignore: IgnoreMatcher): Promise<string[]> {
  const out: string[] = [];
  const visit = async (dir: string, prefix: string): Promise<void> => {
    const names = (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
    for (const d of names) {
      const rel = prefix === '' ? d.name : `${prefix}/${d.name}`;
      const skipped = ignore(rel);
      if (!skipped) out.push(rel);
      if (d.isDirectory()) await visit(path.join(dir, d.name), rel);
    }
  };
  await visit(root, '');
  return out;
}

/** A plain or gzip-compressed tar (ADD extracts those). */
async function isTarArchive(file: string): Promise<boolean> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(512);
    const { bytesRead } = await fh.read(head, 0, 512, 0);
    if (bytesRead >= 2 && head[0] === 0x1f && head[1] === 0x8b) {
      return /\.(tar\.gz|tgz)$/i.test(file);
    }
    return bytesRead >= 262 && head.toString('latin1', 257, 262) === 'ustar';
  } finally {
    await fh.close();
  }
}

/** SHA-256 over the entries' paths, types, modes and contents (not times): the cache key part. */
export async function hashEntries(entries: readonly CopyEntry[]): Promise<string> {
  const h = crypto.createHash('sha256');
  for (const e of entries) {
    h.update(`${e.type}\0${e.dest}\0${e.mode.toString(8)}\0${e.linkname ?? ''}\0${e.size}\0`);
    if (e.src) {
      const fileHash = crypto.createHash('sha256');
      await pipeline(fs.createReadStream(e.src), fileHash);
      h.update(fileHash.digest('hex'));
    }
    h.update('\n');
  }
  return h.digest('hex');
}

/** A tar stream of the non-archive entries, names relative to `/`. */
export function packEntries(entries: readonly CopyEntry[]): Readable {
  const pack = tarStream.pack();
  void (async () => {
    try {
      for (const e of entries) {
        const name = e.dest.replace(/^\/+/, '') || '.';
        const base = { name, mode: e.mode, mtime: e.mtime, uid: 0, gid: 0 };
        if (e.type === 'directory') {
          pack.entry({ ...base, type: 'directory' });
        } else if (e.type === 'symlink') {
          pack.entry({ ...base, type: 'symlink', linkname: e.linkname ?? '' });
        } else if (e.type === 'file') {
          await new Promise<void>((resolve, reject) => {
            const sink = pack.entry({ ...base, type: 'file', size: e.size }, (err) =>
              err ? reject(err) : resolve(),
            );
            pipeline(fs.createReadStream(e.src!), sink).catch(reject);
          });
        }
      }
      pack.finalize();
    } catch (err) {
      pack.destroy(err as Error);
    }
  })();
  return pack as unknown as Readable;
}
