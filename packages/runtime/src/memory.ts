/**
 * Guest memory layers.
 *
 * A running VM maps one *base* memory file privately (see native/memshim.c), so the pages it has
 * changed since it was started are exactly its private anonymous pages in that mapping. A
 * snapshot stores those pages as a *delta*: a sparse file holding each changed page at its
 * guest-physical offset, plus an index of the page runs. Restoring maps the same base file and
 * writes the delta's runs into the new process's RAM before the guest runs.
 */
import fs from 'node:fs';

const PAGE = 4096;
/** pagemap entry bits, seen in the high 32-bit half of each 64-bit entry. */
const PM_PRESENT = 1 << 31; // bit 63
const PM_FILE_OR_SHARED = 1 << 29; // bit 61
const CHUNK = 8 << 20;

/** Page runs `[offset, length]` in bytes, relative to the start of guest RAM. */
export type Runs = Array<[number, number]>;

export interface RamMapping {
  readonly start: number;
  readonly size: number;
}

/** Find the mapping of `memPath` in `/proc/PID/maps` (the guest RAM block). */
export function findRamMapping(pid: number, memPath: string, size: number): RamMapping {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  for (const line of maps.split('\n')) {
    if (!line.endsWith(memPath)) continue;
    const [range] = line.split(' ', 1);
    const [a, b] = range!.split('-').map((h) => parseInt(h, 16));
    if (b! - a! === size) return { start: a!, size };
  }
  throw new Error(`guest RAM mapping of ${memPath} (${size} bytes) not found in pid ${pid}`);
}

/** Page runs the process has made private (copy-on-write) within the RAM mapping. */
export function privateRuns(pid: number, map: RamMapping): Runs {
  const pages = map.size / PAGE;
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  const runs: Runs = [];
  try {
    const batch = 1 << 18; // 256 Ki entries = 2 MiB of pagemap per read
    const buf = Buffer.allocUnsafe(batch * 8);
    for (let first = 0; first < pages; first += batch) {
      const n = Math.min(batch, pages - first);
      const got = fs.readSync(fd, buf, 0, n * 8, (map.start / PAGE + first) * 8);
      const words = new Uint32Array(buf.buffer, buf.byteOffset, got / 4);
      for (let i = 0; i < got / 8; i++) {
        const hi = words[2 * i + 1]!;
        if ((hi & PM_PRESENT) === 0 || (hi & PM_FILE_OR_SHARED) !== 0) continue;
        const off = (first + i) * PAGE;
        const last = runs[runs.length - 1];
        if (last && last[0] + last[1] === off) last[1] += PAGE;
        else runs.push([off, PAGE]);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return runs;
}

/** Copy the process's private pages into a sparse delta file; returns the runs and bytes. */
export function dumpDelta(
  pid: number,
  map: RamMapping,
  deltaPath: string,
): { runs: Runs; bytes: number } {
  const runs = privateRuns(pid, map);
  const mem = fs.openSync(`/proc/${pid}/mem`, 'r');
  const out = fs.openSync(deltaPath, 'w');
  let bytes = 0;
  try {
    fs.ftruncateSync(out, map.size);
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [off, len] of runs) {
      for (let done = 0; done < len; done += CHUNK) {
        const n = Math.min(CHUNK, len - done);
        readFully(mem, buf, n, map.start + off + done);
        writeFully(out, buf, n, off + done);
      }
      bytes += len;
    }
  } finally {
    fs.closeSync(mem);
    fs.closeSync(out);
  }
  return { runs, bytes };
}

/** Write a delta's runs into a (paused, not yet running) process's RAM mapping. */
export function applyDelta(pid: number, map: RamMapping, deltaPath: string, runs: Runs): void {
  if (runs.length === 0) return;
  const mem = fs.openSync(`/proc/${pid}/mem`, 'r+');
  const src = fs.openSync(deltaPath, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [off, len] of runs) {
      for (let done = 0; done < len; done += CHUNK) {
        const n = Math.min(CHUNK, len - done);
        readFully(src, buf, n, off + done);
        writeFully(mem, buf, n, map.start + off + done);
      }
    }
  } finally {
    fs.closeSync(mem);
    fs.closeSync(src);
  }
}

/** Build a standalone base file: `base` with the delta's runs written over it. */
export function flatten(basePath: string, deltaPath: string, runs: Runs, outPath: string): void {
  fs.copyFileSync(basePath, outPath);
  const out = fs.openSync(outPath, 'r+');
  const src = fs.openSync(deltaPath, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [off, len] of runs) {
      for (let done = 0; done < len; done += CHUNK) {
        const n = Math.min(CHUNK, len - done);
        readFully(src, buf, n, off + done);
        writeFully(out, buf, n, off + done);
      }
    }
  } finally {
    fs.closeSync(out);
    fs.closeSync(src);
  }
}

function readFully(fd: number, buf: Buffer, n: number, pos: number): void {
  let got = 0;
  while (got < n) {
    const r = fs.readSync(fd, buf, got, n - got, pos + got);
    if (r === 0) throw new Error(`short read at ${pos + got}`);
    got += r;
  }
}

function writeFully(fd: number, buf: Buffer, n: number, pos: number): void {
  let put = 0;
  while (put < n) put += fs.writeSync(fd, buf, put, n - put, pos + put);
}
