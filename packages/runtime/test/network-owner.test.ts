/**
 * Bridge ownership (issue 12): two managers with different state dirs (two servers with different
 * data dirs) on one bridge. While the first lives, the second is refused before it touches
 * anything, so the first one's taps and tables survive; once the first is killed (-9), its claim
 * is taken over, and the old owner is then refused in turn. The first manager runs in a child
 * process, as a second server would. Needs root; no VMs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkManager, type NetworkManagerOptions } from '../src/network.js';
import { networkSkipReason, sh } from './netns.js';

const SKIP = networkSkipReason();
const TAG = crypto.randomBytes(2).toString('hex');
const BRIDGE = `fvob${TAG}`;
const TAP_PREFIX = `fo${TAG}`;
const SUBNET = `10.219.${crypto.randomBytes(1)[0]!}.0/24`;
const RECORD = `/run/fastvm/bridge-${BRIDGE}.json`;

/** A manager in a child process: allocates `vm` and prints `{tap}` (or `{error, name}`). */
function childManager(
  stateDir: string,
  owner: string,
): {
  child: ChildProcess;
  result: Promise<{ tap?: string; error?: string; name?: string }>;
} {
  const opts = { stateDir, bridge: BRIDGE, tapPrefix: TAP_PREFIX, ipv4Subnet: SUBNET, owner };
  const script =
    "import('./src/network.ts').then(async (m) => {" +
    `  const nm = await m.NetworkManager.create(${JSON.stringify(opts)});` +
    "  const n = await nm.allocate('vm');" +
    "  await nm.applyFirewall('vm', { mode: 'open', ingress: [] });" +
    '  console.log(JSON.stringify({ tap: n.tap }));' +
    '  setInterval(() => {}, 1 << 30);' +
    '}).catch((e) => { console.log(JSON.stringify({ error: e.message, name: e.name })); process.exit(3); });';
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: path.resolve(import.meta.dirname, '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const result = new Promise<{ tap?: string; error?: string; name?: string }>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as { tap?: string; error?: string; name?: string });
    });
    child.on('exit', (code) => reject(new Error(`child exited (${code}) saying ${out}`)));
  });
  return { child, result };
}

/** What the bridge's lock answers, or undefined when nobody holds it. */
function askLock(): Promise<{ pid: number } | undefined> {
  return new Promise((resolve) => {
    const sock = net.connect({ path: `\0fastvm-bridge:${BRIDGE}` });
    let out = '';
    sock.on('data', (b: Buffer) => (out += b.toString()));
    sock.on('end', () => resolve(JSON.parse(out) as { pid: number }));
    sock.on('error', () => resolve(undefined));
  });
}

const exited = (c: ChildProcess): Promise<void> =>
  c.exitCode !== null || c.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => c.once('exit', () => resolve()));

describe.skipIf(SKIP)(`bridge ownership${SKIP ? ` — skipped: ${SKIP}` : ''}`, () => {
  let dirA: string;
  let dirB: string;
  let first: ReturnType<typeof childManager> | undefined;
  let tapA = '';
  const logs: string[] = [];
  const optsB = (): NetworkManagerOptions => ({
    stateDir: dirB,
    bridge: BRIDGE,
    tapPrefix: TAP_PREFIX,
    ipv4Subnet: SUBNET,
    owner: 'server-b',
    log: (m) => logs.push(m),
  });

  beforeAll(async () => {
    dirA = fs.mkdtempSync(path.join(os.tmpdir(), 'fvown-a-'));
    dirB = fs.mkdtempSync(path.join(os.tmpdir(), 'fvown-b-'));
    first = childManager(dirA, 'server-a');
    const r = await first.result;
    expect(r.error).toBeUndefined();
    tapA = r.tap!;
  });

  afterAll(async () => {
    if (first?.child.pid && first.child.exitCode === null) first.child.kill('SIGKILL');
    if (first) await exited(first.child);
    // Whatever is left: managers over each state dir remove it all (and restore sysctls).
    for (const stateDir of [dirB, dirA]) {
      const nm = await NetworkManager.create({ ...optsB(), stateDir }).catch(() => undefined);
      await nm?.shutdown();
    }
    await sh('ip', ['link', 'del', BRIDGE]).catch(() => {});
    fs.rmSync(RECORD, { force: true });
    for (const d of [dirA, dirB]) fs.rmSync(d, { recursive: true, force: true });
  });

  const hasTap = async (tap: string) => (await sh('ip', ['-br', 'link'])).includes(tap);
  const hasTable = async (tap: string) =>
    (await sh('nft', ['list', 'tables'])).includes(`fastvm_${BRIDGE}_${tap}`);

  it('records the owner; a second server with another data dir is refused and changes nothing', async () => {
    const second = await NetworkManager.create(optsB()).then(
      (nm) => nm,
      (e: unknown) => e,
    );
    // Were it let in, a server would reconcile at once (and delete the first one's taps).
    if (second instanceof NetworkManager) await second.reconcile([]);
    // The first server's VM keeps its tap, its firewall table and its bridge port.
    expect(await hasTap(tapA)).toBe(true);
    expect(await hasTable(tapA)).toBe(true);
    expect(await sh('ip', ['-br', 'link', 'show', BRIDGE])).toContain(BRIDGE);
    expect(second).toBeInstanceOf(Error);
    expect((second as Error).name).toBe('BridgeInUseError');
    expect((second as Error).message).toContain(`bridge ${BRIDGE} belongs to another running`);
    expect((second as Error).message).toContain(`server-a, pid ${first!.child.pid}`);
    const record = JSON.parse(fs.readFileSync(RECORD, 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({
      stateDir: fs.realpathSync(dirA),
      owner: 'server-a',
      pid: first!.child.pid,
    });
    // The refused manager wrote nothing of its own.
    expect(fs.existsSync(path.join(dirB, 'network.json'))).toBe(false);
    expect(JSON.parse(fs.readFileSync(RECORD, 'utf8'))).toEqual(record);
  });

  it("takes over a dead owner's claim (kill -9); the old owner is then refused in turn", async () => {
    first!.child.kill('SIGKILL');
    await exited(first!.child);
    const b = await NetworkManager.create(optsB());
    expect(logs.some((m) => m.includes(`taking over bridge ${BRIDGE}`))).toBe(true);
    expect(JSON.parse(fs.readFileSync(RECORD, 'utf8'))).toMatchObject({
      stateDir: fs.realpathSync(dirB),
      owner: 'server-b',
      pid: process.pid,
    });
    // Now the dead server's leftovers are this one's to clean up.
    const r = await b.reconcile([]);
    expect(r.removedTaps).toContain(tapA);
    expect(r.removedTables).toContain(`fastvm_${BRIDGE}_${tapA}`);
    expect(await hasTap(tapA)).toBe(false);

    const again = childManager(dirA, 'server-a');
    const refused = await again.result.catch((e: Error) => ({ error: e.message, name: 'exit' }));
    await exited(again.child);
    expect(refused.name).toBe('BridgeInUseError');
    expect(refused.error).toContain(`server-b, pid ${process.pid}`);

    // A manager of this same state dir in this process shares the claim; closing it (with a
    // VM still allocated) leaves the claim held.
    await b.allocate('vm-b');
    const [twin, triplet] = await Promise.all([
      NetworkManager.create(optsB()),
      NetworkManager.create(optsB()),
    ]);
    expect(twin.get('vm-b')).toEqual(b.get('vm-b'));
    await twin.close();
    await triplet.close();
    expect((await askLock())?.pid).toBe(process.pid);
    await b.shutdown();
    expect(await askLock()).toBeUndefined();
    expect(fs.existsSync(RECORD)).toBe(false);
    expect(await sh('ip', ['-br', 'link'])).not.toContain(BRIDGE);
  });
});
