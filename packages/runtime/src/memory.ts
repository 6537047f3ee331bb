/**
 * Guest memory layers.
 *
 * A running VM maps one *base* memory file privately (see native/memshim.c), so the pages it has
 * changed since it started are exactly its private anonymous pages in that mapping. A snapshot
 * stores the ones that differ from the VM's previous snapshot as a *delta* file over that
 * snapshot's memory (base file + chain of deltas); restoring maps the base file and writes the
 * chain's pages into the new process's RAM before the guest runs. The page copying is done by
 * native/memdelta.c (process_vm_readv/writev over the run list from /proc/PID/pagemap).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface RamMapping {
  readonly start: number;
  readonly size: number;
  /**
   * Mapped privately, as the memshim makes it. A shared mapping would let the guest write into
   * a snapshot's base file, which every fork of it reads: a restore checks this before the
   * guest runs.
   */
  readonly private: boolean;
}

/** Find the mapping of `memPath` in `/proc/PID/maps` (the guest RAM block). */
export function findRamMapping(pid: number, memPath: string, size: number): RamMapping {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  for (const line of maps.split('\n')) {
    if (!line.endsWith(memPath)) continue;
    const [range, perms] = line.split(' ', 2);
    const [a, b] = range!.split('-').map((h) => parseInt(h, 16));
    if (b! - a! === size) return { start: a!, size, private: perms?.[3] === 'p' };
  }
  throw new Error(`guest RAM mapping of ${memPath} (${size} bytes) not found in pid ${pid}`);
}

/**
 * Copy the process's changed pages into a delta file: with `view`, only the pages whose content
 * differs from it (the VM's memory at its previous snapshot), else every private page.
 */
export async function dumpDelta(
  tool: string,
  pid: number,
  map: RamMapping,
  deltaPath: string,
  view?: { memBase: string; deltas: readonly string[] },
): Promise<{ runs: number; bytes: number; examined: number }> {
  const { stdout } = await execFileP(tool, [
    'dump',
    String(pid),
    String(map.start),
    String(map.size),
    deltaPath,
    ...(view ? [view.memBase, ...view.deltas] : []),
  ]);
  return JSON.parse(stdout) as { runs: number; bytes: number; examined: number };
}

/** Write deltas' pages, in order, into a (not yet running) process's RAM. */
export async function applyDeltas(
  tool: string,
  pid: number,
  map: RamMapping,
  deltas: readonly string[],
  /** Runs the tool instead of a process started from here (helper.ts `run`). */
  runner?: { run(argv: readonly string[]): Promise<void> },
): Promise<void> {
  if (deltas.length === 0) return;
  const args = ['apply', String(pid), String(map.start), ...deltas];
  if (runner) await runner.run([tool, ...args]);
  else await execFileP(tool, args);
}

/** Build a standalone base file: `base` (holes kept) with the deltas written over it in order. */
export async function flattenDeltas(
  tool: string,
  base: string,
  deltas: readonly string[],
  out: string,
): Promise<void> {
  // Background work that runs right when forks of the new snapshot start: at nice 10 it yields
  // the CPU to them (they apply the deltas themselves until the flatten is done).
  await execFileP('nice', ['-n', '10', tool, 'flatten', base, out, ...deltas]);
}

/** Merge a chain of deltas into one (each page from the last delta that has it). */
export async function mergeDeltas(
  tool: string,
  deltas: readonly string[],
  out: string,
): Promise<{ runs: number; bytes: number }> {
  const { stdout } = await execFileP('nice', ['-n', '10', tool, 'merge', out, ...deltas]);
  return JSON.parse(stdout) as { runs: number; bytes: number };
}
