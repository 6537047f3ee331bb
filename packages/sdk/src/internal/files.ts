// Upload and download through exec, so they work wherever the API does (no storage URLs to
// reach, no guest networking needed):
// - upload: the bytes go in ~1 MiB chunks as exec stdin (`cat > tmp`, `cat >> tmp` …), then one
//   `mv -fT tmp dest` (files) or `tar -xf tmp -C dest` (directories, sent as a tar stream made by
//   the local `tar`). A failure removes the temp file, so the destination is never half written.
// - download: a streaming exec of `cat` (files) or `tar -cf - -C dir .` (directories) is written
//   to a temp file / extracted into a temp directory next to the destination, which is renamed
//   (or merged) into place only when the command succeeded.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FileTransferError } from '../core/errors.js';
import type { ExecEvent, TransferProgress } from '../types.js';

/** Raw stdin bytes per exec: the agent's 1 MiB frame limit, minus room for argv. */
export const CHUNK_BYTES = 1024 * 1024 - 16 * 1024;

/** What the transfer helpers need from the client. */
export interface ExecOps {
  run(
    argv: string[],
    stdin?: Buffer,
  ): Promise<{ exitCode: number; stdout: string; stderr: string; timedOut: boolean }>;
  stream(argv: string[]): AsyncIterable<ExecEvent>;
  signal: AbortSignal | undefined;
  onProgress: ((p: TransferProgress) => void) | undefined;
}

const tag = (): string => randomBytes(4).toString('hex');

function checkRemote(p: string, what: string): void {
  if (typeof p !== 'string' || p === '' || p.includes('\0')) {
    throw new FileTransferError(`${what}: a non-empty path without NUL bytes is required`);
  }
  if (!p.startsWith('/')) {
    throw new FileTransferError(`${what}: the path in the VM must be absolute, got '${p}'`);
  }
}

function fail(what: string, r: { exitCode: number; stderr: string; timedOut: boolean }): never {
  const why = r.timedOut ? 'timed out' : `exit code ${r.exitCode}`;
  const err = r.stderr.trim();
  throw new FileTransferError(`${what} failed in the VM (${why})${err ? `: ${err}` : ''}`, {
    exitCode: r.exitCode,
    stderr: r.stderr,
  });
}

/** What a remote path is: `missing`, `file` or `directory` (the contract's test -e / test -d). */
export async function remoteKind(
  ops: ExecOps,
  remote: string,
): Promise<'missing' | 'file' | 'directory'> {
  const r = await ops.run(['sh', '-c', 'test -e "$1" || exit 2; test -d "$1"', 'sh', remote]);
  if (r.timedOut) fail(`checking ${remote}`, r);
  if (r.exitCode === 2) return 'missing';
  return r.exitCode === 0 ? 'directory' : 'file';
}

/** Size in bytes of a remote file or directory tree (best effort: undefined if unknown). */
async function remoteSize(ops: ExecOps, remote: string, dir: boolean): Promise<number | undefined> {
  const argv = dir ? ['du', '-sb', '--', remote] : ['stat', '-c', '%s', '--', remote];
  const r = await ops.run(argv).catch(() => undefined);
  const n = r && r.exitCode === 0 ? Number.parseInt(r.stdout, 10) : NaN;
  return Number.isFinite(n) ? n : undefined;
}

/** Sends `source` into a new remote file `tmp` in exec-sized chunks; returns the byte count. */
async function sendChunks(
  ops: ExecOps,
  source: AsyncIterable<Buffer>,
  tmp: string,
  total: number | undefined,
): Promise<number> {
  let sent = 0;
  let first = true;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async (): Promise<void> => {
    const chunk = Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    const r = await ops.run(['sh', '-c', first ? 'cat > "$1"' : 'cat >> "$1"', 'sh', tmp], chunk);
    if (r.exitCode !== 0 || r.timedOut) fail('writing the file', r);
    first = false;
    sent += chunk.length;
    ops.onProgress?.({ bytes: sent, total });
  };
  for await (const data of source) {
    let buf = data;
    while (buf.length > 0) {
      const take = Math.min(buf.length, CHUNK_BYTES - pendingBytes);
      pending.push(buf.subarray(0, take));
      pendingBytes += take;
      buf = buf.subarray(take);
      if (pendingBytes === CHUNK_BYTES) await flush();
    }
  }
  if (pendingBytes > 0 || first) await flush();
  return sent;
}

/** Uploads a local file to `remote` (into it, if `remote` is a directory). */
export async function uploadFile(
  ops: ExecOps,
  local: string,
  remote: string,
  size: number,
): Promise<{ bytes: number; destination: string }> {
  checkRemote(remote, 'upload');
  let dest = remote;
  if (remote.endsWith('/') || (await remoteKind(ops, remote)) === 'directory') {
    dest = path.posix.join(remote, path.basename(local));
  }
  const tmp = `${dest}.fastvm-${tag()}.part`;
  ops.onProgress?.({ bytes: 0, total: size });
  try {
    const bytes = await sendChunks(
      ops,
      createReadStream(local, { highWaterMark: CHUNK_BYTES }) as AsyncIterable<Buffer>,
      tmp,
      size,
    );
    const r = await ops.run(['mv', '-fT', '--', tmp, dest]);
    if (r.exitCode !== 0 || r.timedOut) fail(`moving the file to ${dest}`, r);
    return { bytes, destination: dest };
  } catch (err) {
    await ops.run(['rm', '-f', '--', tmp]).catch(() => undefined);
    throw asTransferError(err, `upload of ${local}`);
  }
}

/** Uploads the contents of a local directory into `remote` (created; existing files merged). */
export async function uploadDirectory(
  ops: ExecOps,
  local: string,
  remote: string,
): Promise<{ bytes: number; destination: string }> {
  checkRemote(remote, 'upload');
  const total = await tarSizeEstimate(local);
  const tmp = `/var/tmp/fastvm-upload-${process.pid}-${tag()}.tar`;
  const tar = spawnTar(['-cf', '-', '-C', local, '.']);
  ops.onProgress?.({ bytes: 0, total });
  try {
    const [bytes] = await Promise.all([
      sendChunks(ops, tar.child.stdout as AsyncIterable<Buffer>, tmp, total),
      tar.done,
    ]);
    const r = await ops.run([
      'sh',
      '-c',
      'mkdir -p -- "$1" && tar -xf "$2" -C "$1"; rc=$?; rm -f -- "$2"; exit $rc',
      'sh',
      remote,
      tmp,
    ]);
    if (r.exitCode !== 0 || r.timedOut) fail(`extracting into ${remote}`, r);
    return { bytes, destination: remote };
  } catch (err) {
    tar.child.kill();
    await ops.run(['rm', '-f', '--', tmp]).catch(() => undefined);
    throw asTransferError(err, `upload of ${local}`);
  }
}

/** Downloads a remote file to `local` (into it, if `local` is a directory). */
export async function downloadFile(
  ops: ExecOps,
  remote: string,
  local: string,
): Promise<{ bytes: number; destination: string }> {
  let dest = local;
  const st = await fsp.stat(local).catch(() => undefined);
  if (st?.isDirectory() || local.endsWith(path.sep))
    dest = path.join(local, path.posix.basename(remote));
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.fastvm-${tag()}.part`;
  const total = await remoteSize(ops, remote, false);
  const out = createWriteStream(tmp, { flags: 'wx' });
  let bytes = 0;
  try {
    ops.onProgress?.({ bytes: 0, total });
    const exit = await pump(ops.stream(['cat', '--', remote]), out, (n) => {
      bytes += n;
      ops.onProgress?.({ bytes, total });
    });
    await closeStream(out);
    if (exit.exitCode !== 0 || exit.timedOut) fail(`reading ${remote}`, exit);
    await fsp.rename(tmp, dest);
    return { bytes, destination: dest };
  } catch (err) {
    out.destroy();
    await fsp.rm(tmp, { force: true });
    throw asTransferError(err, `download of ${remote}`);
  }
}

/** Downloads a remote directory's contents into `local` (created; existing files kept). */
export async function downloadDirectory(
  ops: ExecOps,
  remote: string,
  local: string,
): Promise<{ bytes: number; destination: string }> {
  const st = await fsp.stat(local).catch(() => undefined);
  if (st && !st.isDirectory()) {
    throw new FileTransferError(`download: ${remote} is a directory but ${local} is a file`);
  }
  await fsp.mkdir(path.dirname(path.resolve(local)), { recursive: true });
  const tmp = `${path.resolve(local)}.fastvm-${tag()}.part`;
  await fsp.mkdir(tmp);
  const size = await remoteSize(ops, remote, true);
  const total = size === undefined ? undefined : Math.ceil(size * 1.02) + 10240;
  const tar = spawnTar(['-xf', '-', '-C', tmp]);
  let bytes = 0;
  try {
    ops.onProgress?.({ bytes: 0, total });
    const stdin = tar.child.stdin as unknown as WriteStream;
    const exit = await pump(ops.stream(['tar', '-cf', '-', '-C', remote, '.']), stdin, (n) => {
      bytes += n;
      ops.onProgress?.({ bytes, total });
    });
    await closeStream(stdin);
    if (exit.exitCode !== 0 || exit.timedOut) fail(`archiving ${remote}`, exit);
    await tar.done;
    if (st) await mergeInto(tmp, local);
    else await fsp.rename(tmp, local);
    return { bytes, destination: local };
  } catch (err) {
    tar.child.kill();
    await fsp.rm(tmp, { recursive: true, force: true });
    throw asTransferError(err, `download of ${remote}`);
  }
}

/**
 * Writes a streaming exec's stdout to `out` (with backpressure); returns the exit event. If `out`
 * closes early (a local `tar -x` exits once it has read the end-of-archive blocks and leaves the
 * padding unread), the rest of the output is drained and dropped; the tar's own exit status decides.
 */
async function pump(
  events: AsyncIterable<ExecEvent>,
  out: NodeJS.WritableStream & { destroyed?: boolean },
  onBytes: (n: number) => void,
): Promise<{ exitCode: number; stderr: string; timedOut: boolean }> {
  const stderr: Buffer[] = [];
  let outError: Error | undefined;
  let closed = false;
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'EPIPE') closed = true;
    else outError = err;
  };
  const onClose = (): void => {
    closed = true;
  };
  out.on('error', onError);
  out.on('close', onClose);
  try {
    for await (const ev of events) {
      if (outError) throw outError;
      if (ev.type === 'stdout') {
        if (!closed && !out.destroyed && !out.write(ev.data)) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              out.off('drain', done);
              out.off('close', done);
              out.off('error', done);
              resolve();
            };
            out.on('drain', done);
            out.on('close', done);
            out.on('error', done);
          });
        }
        onBytes(ev.data.length);
      } else if (ev.type === 'stderr') {
        if (stderr.length < 256) stderr.push(ev.data);
      } else {
        if (outError) throw outError;
        return {
          exitCode: ev.exitCode,
          timedOut: ev.timedOut,
          stderr: Buffer.concat(stderr).toString('utf8'),
        };
      }
    }
  } finally {
    out.off('error', onError);
    out.off('close', onClose);
  }
  throw new FileTransferError('the command stream ended without an exit status');
}

/** Ends a writable and waits until it is flushed (or already closed). */
function closeStream(s: NodeJS.WritableStream & { destroyed?: boolean }): Promise<void> {
  if (s.destroyed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      if (err.code === 'EPIPE') resolve();
      else reject(err);
    };
    s.once('error', onError);
    s.once('close', () => resolve());
    s.end(() => {
      s.off('error', onError);
      resolve();
    });
  });
}

/** Moves the entries of `src` into `dst` (directories merged, other entries replaced). */
async function mergeInto(src: string, dst: string): Promise<void> {
  for (const name of await fsp.readdir(src)) {
    const s = path.join(src, name);
    const d = path.join(dst, name);
    const [ss, ds] = await Promise.all([fsp.lstat(s), fsp.lstat(d).catch(() => undefined)]);
    if (ss.isDirectory() && ds?.isDirectory()) {
      await mergeInto(s, d);
    } else {
      if (ds) await fsp.rm(d, { recursive: true, force: true });
      await fsp.rename(s, d);
    }
  }
  await fsp.rm(src, { recursive: true, force: true });
}

/** The local `tar`, with its exit turned into a promise (rejects with its stderr). */
function spawnTar(args: string[]): { child: ChildProcess; done: Promise<void> } {
  const child = spawn('tar', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    if (stderr.length < 4096) stderr += c.toString();
  });
  child.stdin?.on('error', () => undefined); // reported through the exit code
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (err) =>
      reject(new FileTransferError(`cannot run the local tar: ${err.message}`, { cause: err })),
    );
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(
          new FileTransferError(
            `local tar ${args[0]} failed (${signal ?? `exit code ${code}`}): ${stderr.trim()}`,
          ),
        );
    });
  });
  done.catch(() => undefined);
  return { child, done };
}

/** Roughly the size of `tar -cf` of a directory: 512-byte headers and padded contents. */
async function tarSizeEstimate(dir: string): Promise<number> {
  let total = 1024;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      total += 512 + (p.length > 100 ? 1024 : 0);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) total += Math.ceil((await fsp.stat(p)).size / 512) * 512;
    }
  };
  await walk(dir);
  return Math.ceil(total / 10240) * 10240;
}

function asTransferError(err: unknown, what: string): Error {
  if (err instanceof FileTransferError) return err;
  if (err instanceof Error && err.name !== 'Error') return err; // SDK errors (API, abort, …)
  const message = err instanceof Error ? err.message : String(err);
  return new FileTransferError(`${what} failed: ${message}`, { cause: err });
}
