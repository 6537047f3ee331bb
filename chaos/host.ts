/**
 * What the chaos suite reads off the host: QEMU processes of a data dir, files they hold open
 * although deleted, links and nftables tables.
 * @module
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tapPrefixFor } from '@fastvm/runtime';

/** QEMU processes that run from `<runtimeDir>/vms/<name>/`, by pid → name. */
export function qemuProcesses(runtimeDir: string): Map<number, string> {
  const found = new Map<number, string>();
  const prefix = `unix:${path.join(runtimeDir, 'vms')}/`;
  for (const p of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'))) continue;
    } catch {
      continue;
    }
    const qmp = argv.find((x) => x.startsWith(prefix));
    if (qmp && /qemu-system/.test(argv[0] ?? '')) {
      found.set(Number(p), qmp.slice(prefix.length).split('/')[0]!);
    }
  }
  // A frozen copy that the memshim forks for a snapshot has its parent's command line: skip it.
  for (const pid of [...found.keys()]) {
    if (found.has(parentOf(pid))) found.delete(pid);
  }
  return found;
}

function parentOf(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return 0;
  }
}

/**
 * Removes a host interface, the taps named after it and the nftables tables named after it (what a failed
 * run may leave; a passing run leaves nothing).
 */
export function removeNetwork(bridge: string): void {
  const prefix = tapPrefixFor(bridge);
  const run = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      return '';
    }
  };
  for (const line of run('ip', ['-o', 'link', 'show']).split('\n')) {
    const name = /^\d+: ([^:@]+)/.exec(line)?.[1];
    if (name?.startsWith(prefix)) run('ip', ['link', 'del', name]);
  }
  run('ip', ['link', 'del', bridge]);
  for (const t of nftTables()) {
    if (t.includes(bridge)) run('nft', ['delete', 'table', ...t.split(' ').slice(1)]);
  }
}

/** Files under `dir` that process `pid` has open although they were deleted. */
export function deletedButOpen(pid: number, dir: string): string[] {
  const bad: string[] = [];
  let fds: string[] = [];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return bad;
  }
  for (const fd of fds) {
    try {
      const target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith(dir) && target.endsWith(' (deleted)')) bad.push(target);
    } catch {
      /* closed meanwhile */
    }
  }
  return bad;
}

/** Network interface names on the host. */
export function links(): Set<string> {
  try {
    const out = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
    return new Set(
      out
        .split('\n')
        .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1])
        .filter((x): x is string => Boolean(x)),
    );
  } catch {
    return new Set();
  }
}

/** `family name` of every nftables table. */
export function nftTables(): Set<string> {
  try {
    const out = execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' });
    return new Set(out.split('\n').filter(Boolean));
  } catch {
    return new Set();
  }
}

/** Network namespaces. */
export function netnsList(): Set<string> {
  try {
    const out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    return new Set(
      out
        .split('\n')
        .map((l) => l.split(' ')[0]!)
        .filter(Boolean),
    );
  } catch {
    return new Set();
  }
}

/** Files (recursively) under `dir`. */
export function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[])
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name));
}
