/**
 * A network namespace standing in for "the internet" in networking tests: a veth pair whose host
 * end is routed by the host (like an uplink) and whose namespace end holds two IPv6 addresses
 * and one IPv4 address, plus an HTTP server on port 9000. Only this namespace, the host's own
 * addresses on the veth, and bridges the tests create ever see traffic.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatIpv6, parseIpv6 } from '../src/network.js';

/** Why network tests cannot run here (not root, no /dev/net/tun), or undefined when they can. */
export function networkSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!fs.existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  return undefined;
}

export interface Internet {
  readonly ns: string;
  /** Host end of the veth. */
  readonly hostIf: string;
  /** Host address on the veth (the namespace's gateway). */
  readonly hostV6: string;
  readonly hostV4: string;
  /** The namespace's addresses: `v6a` is its default source, `v6b` a second one. */
  readonly v6a: string;
  readonly v6b: string;
  readonly v4: string;
  /** Body of `/hello.txt` on the namespace's server (port 9000). */
  readonly hello: string;
  /** Lines the namespace's HTTP server logged (client addresses). */
  serverLog(): string;
  /**
   * `curl` from the namespace: the HTTP status, or `000` when nothing answered in time.
   * `from` picks the source address.
   */
  httpStatus(url: string, opts?: { from?: string; timeoutS?: number }): Promise<string>;
  destroy(): Promise<void>;
}

/** Runs a command; resolves with its exit code and output whatever the code. */
export function shAny(
  cmd: string,
  args: readonly string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export function sh(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

/** A random ULA /64 base (`fdxx:xxxx:xxxx:xxxx::`) as a bigint. */
export function randomUla(): bigint {
  return (0xfdn << 120n) | (BigInt(`0x${crypto.randomBytes(7).toString('hex')}`) << 64n);
}

export async function createInternet(tag: string, v4Third: number): Promise<Internet> {
  const ns = `fvtnet-${tag}`;
  const hostIf = `fvi${tag}`;
  const base = randomUla();
  const hostV6 = formatIpv6(base + 1n);
  const v6a = formatIpv6(base + 2n);
  const v6b = formatIpv6(base + 3n);
  const hostV4 = `10.214.${v4Third}.1`;
  const v4 = `10.214.${v4Third}.2`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvtnet-'));
  const hello = `hello from the internet ${tag}\n`;
  fs.writeFileSync(path.join(dir, 'hello.txt'), hello);
  const logFile = path.join(dir, 'server.log');
  let server: ChildProcess | undefined;

  const destroy = async (): Promise<void> => {
    if (server?.pid) {
      try {
        process.kill(server.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    // Anything else still running in our namespace was started by this helper.
    const pids = await sh('ip', ['netns', 'pids', ns]).catch(() => '');
    for (const pid of pids.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await sh('ip', ['link', 'del', hostIf]).catch(() => {});
    await sh('ip', ['netns', 'del', ns]).catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    await sh('ip', ['netns', 'add', ns]);
    await sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    fs.writeFileSync(`/proc/sys/net/ipv6/conf/${hostIf}/accept_dad`, '0');
    const inNs = (args: string[]): Promise<string> => sh('ip', ['-n', ns, ...args]);
    await sh('ip', ['addr', 'add', `${hostV6}/64`, 'dev', hostIf, 'nodad']);
    await sh('ip', ['addr', 'add', `${hostV4}/24`, 'dev', hostIf]);
    await sh('ip', ['link', 'set', hostIf, 'up']);
    await inNs(['link', 'set', 'lo', 'up']);
    await inNs(['addr', 'add', `${v6a}/64`, 'dev', 'eth0', 'nodad']);
    await inNs(['addr', 'add', `${v6b}/64`, 'dev', 'eth0', 'nodad']);
    await inNs(['addr', 'add', `${v4}/24`, 'dev', 'eth0']);
    await inNs(['link', 'set', 'eth0', 'up']);
    await inNs(['-6', 'route', 'add', 'default', 'via', hostV6]);
    await inNs(['route', 'add', 'default', 'via', hostV4]);
    const log = fs.openSync(logFile, 'a');
    server = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        'python3',
        '-m',
        'http.server',
        '--bind',
        '::',
        '9000',
        '--directory',
        dir,
      ],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    server.on('error', () => {});
    const deadline = Date.now() + 15_000;
    for (;;) {
      const code = await sh('ip', [
        'netns',
        'exec',
        ns,
        'curl',
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-m',
        '1',
        'http://[::1]:9000/hello.txt',
      ]).catch(() => '000');
      if (code === '200') break;
      if (Date.now() > deadline) throw new Error('netns HTTP server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await destroy();
    throw err;
  }

  return {
    ns,
    hostIf,
    hostV6,
    hostV4,
    v6a,
    v6b,
    v4,
    hello,
    serverLog: () => fs.readFileSync(logFile, 'utf8'),
    async httpStatus(url, opts = {}) {
      const t = opts.timeoutS ?? 1;
      const args = ['netns', 'exec', ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}'];
      args.push('--connect-timeout', String(t), '-m', String(t + 2));
      if (opts.from) args.push('--interface', opts.from);
      const r = await shAny('ip', [...args, url]);
      return /^\d{3}$/.test(r.stdout) ? r.stdout : '000';
    },
    destroy,
  };
}

/** `http://[addr]:port/` for an IPv6 address, `http://addr:port/` otherwise. */
export function url(addr: string, port: number, file = ''): string {
  const host = addr.includes(':') ? `[${addr.split('/')[0]}]` : addr.split('/')[0];
  return `http://${host}:${port}/${file}`;
}

/** Another address in the /64 of `ipv6` (for spoofing tests). */
export function otherInPrefix(ipv6: string, iid: bigint): string {
  const base = parseIpv6(ipv6.split('/')[0]!) & ~((1n << 64n) - 1n);
  return formatIpv6(base | iid);
}
