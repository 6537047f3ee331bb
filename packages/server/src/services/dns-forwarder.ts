/**
 * The VMs' resolver: a DNS forwarder on the host's IPv4 gateway (UDP and TCP, on the port the
 * network manager chose), which every guest reaches as `10.0.2.2:53` (its table translates the
 * address and port). It knows which VM asks by the query's source address, the VM's own IPv4
 * after translation, and for that VM:
 *
 * 1. applies the DNS gate (`dns.mode` allow/deny with `dns.domains`): a refused name gets
 *    NXDOMAIN without asking upstream;
 * 2. forwards the query unchanged to the upstream resolvers (in order, 2 s each; a truncated
 *    UDP answer is asked again over TCP when the guest asked over TCP);
 * 3. before answering, puts the answer's A/AAAA addresses into the nft sets of the VM's FQDN
 *    rules that match the *queried* name (`NetworkManager.learn`, timeout = the records' lowest
 *    TTL, clamped), so the guest's first connection to them is already allowed. If that fails
 *    the guest gets SERVFAIL, never an answer it could not use.
 *
 * Queries from addresses that are not a VM's get REFUSED. Upstreams: `FASTVM_DNS_UPSTREAM`
 * (`ip`, `ip:port` or `[ipv6]:port`, comma-separated), else the host's `/etc/resolv.conf`.
 * @module
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import { dnsGateAllows, normalizeName, type DnsPolicy } from '@fastvm/runtime';
import dnsPacket, { type Packet } from 'dns-packet';
import type { Logger } from 'pino';

export interface Upstream {
  readonly host: string;
  readonly port: number;
}

/** What the forwarder needs to know about the VM behind a source address. */
export interface DnsClientVm {
  readonly vmId: string;
  readonly dns: DnsPolicy | undefined;
}

export interface DnsForwarderOptions {
  /** Address and port to listen on (the IPv4 gateway and the manager's `dnsPort`). */
  readonly host: string;
  readonly port: number;
  readonly upstreams: readonly Upstream[];
  /** The VM whose (translated) IPv4 is `addr`, if any. */
  vmFor(addr: string): DnsClientVm | undefined;
  /** Puts addresses learned for `name` into the VM's FQDN sets (resolves when in effect). */
  learn(
    vmId: string,
    name: string,
    addrs: { v4: string[]; v6: string[] },
    ttlS: number,
  ): Promise<unknown>;
  readonly logger: Logger;
  /** Per upstream attempt (default 2000 ms). */
  readonly timeoutMs?: number;
}

const MAX_IN_FLIGHT = 512;
const RCODE = { SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

/** Parses `FASTVM_DNS_UPSTREAM`; undefined when unset. Throws on a bad entry. */
export function upstreamsFromEnv(value: string | undefined): Upstream[] | undefined {
  if (!value?.trim()) return undefined;
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry) ?? /^([^:]+)(?::(\d+))?$/.exec(entry);
      const host = m?.[1] ?? entry;
      const port = m?.[2] ? Number(m[2]) : 53;
      if (!net.isIP(host) || port < 1 || port > 65535) {
        throw new Error(
          `FASTVM_DNS_UPSTREAM: invalid resolver ${entry} (ip, ip:port or [ipv6]:port)`,
        );
      }
      return { host, port };
    });
}

/** The host's resolvers from `/etc/resolv.conf` (port 53). */
export function hostResolvers(file = '/etc/resolv.conf'): Upstream[] {
  try {
    return fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
      .filter((h): h is string => h !== undefined && net.isIP(h.split('%')[0]!) !== 0)
      .map((host) => ({ host, port: 53 }));
  } catch {
    return [];
  }
}

export class DnsForwarder {
  readonly #opts: DnsForwarderOptions;
  #udp: dgram.Socket | undefined;
  #tcp: net.Server | undefined;
  #inFlight = 0;
  readonly #sockets = new Set<net.Socket>();

  constructor(opts: DnsForwarderOptions) {
    this.#opts = opts;
  }

  async start(): Promise<void> {
    const { host, port } = this.#opts;
    const udp = dgram.createSocket({ type: net.isIPv6(host) ? 'udp6' : 'udp4' });
    udp.on('message', (msg, rinfo) => {
      void this.#answer(msg, rinfo.address, false).then((reply) => {
        if (reply) udp.send(reply, rinfo.port, rinfo.address);
      });
    });
    udp.on('error', (err) => this.#opts.logger.warn({ err }, 'dns forwarder: udp error'));
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, () => {
        udp.off('error', reject);
        resolve();
      });
    });
    this.#udp = udp;
    const tcp = net.createServer((sock) => this.#serveTcp(sock));
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(port, host, () => {
        tcp.off('error', reject);
        resolve();
      });
    });
    this.#tcp = tcp;
  }

  async close(): Promise<void> {
    this.#udp?.close();
    this.#udp = undefined;
    for (const s of this.#sockets) s.destroy();
    const tcp = this.#tcp;
    this.#tcp = undefined;
    if (tcp) await new Promise<void>((resolve) => tcp.close(() => resolve()));
  }

  /** DNS over TCP: 2-byte length-prefixed messages, answered in order. */
  #serveTcp(sock: net.Socket): void {
    this.#sockets.add(sock);
    sock.on('close', () => this.#sockets.delete(sock));
    sock.on('error', () => {});
    sock.setTimeout(10_000, () => sock.destroy());
    let buf = Buffer.alloc(0);
    let chain = Promise.resolve();
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        const src = sock.remoteAddress?.replace(/^::ffff:/, '') ?? '';
        chain = chain.then(async () => {
          const reply = await this.#answer(Buffer.from(msg), src, true);
          if (!reply || sock.destroyed) return;
          const len = Buffer.alloc(2);
          len.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([len, reply]));
        });
      }
    });
  }

  /** The reply to one query from `src` (undefined: drop it). */
  async #answer(msg: Buffer, src: string, overTcp: boolean): Promise<Buffer | undefined> {
    let query: Packet;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    if (query.type !== 'query') return undefined;
    const vm = this.#opts.vmFor(src);
    if (!vm) return errorReply(query, RCODE.REFUSED);
    const name = normalizeName(query.questions?.[0]?.name ?? '');
    if (vm.dns && !dnsGateAllows(vm.dns, name)) return errorReply(query, RCODE.NXDOMAIN);
    if (this.#inFlight >= MAX_IN_FLIGHT) return errorReply(query, RCODE.SERVFAIL);
    this.#inFlight++;
    try {
      const raw = await this.#resolve(msg, overTcp);
      if (!raw) return errorReply(query, RCODE.SERVFAIL);
      let answer: Packet;
      try {
        answer = dnsPacket.decode(raw);
      } catch {
        return errorReply(query, RCODE.SERVFAIL);
      }
      const v4: string[] = [];
      const v6: string[] = [];
      let ttl = Infinity;
      for (const a of answer.answers ?? []) {
        if (a.type === 'A' || a.type === 'AAAA') {
          (a.type === 'A' ? v4 : v6).push(a.data);
          ttl = Math.min(ttl, a.ttl ?? 0);
        }
      }
      if (name && v4.length + v6.length > 0) {
        try {
          await this.#opts.learn(vm.vmId, name, { v4, v6 }, ttl === Infinity ? 0 : ttl);
        } catch (err) {
          this.#opts.logger.error({ err, vmId: vm.vmId, name }, 'dns forwarder: learn failed');
          return errorReply(query, RCODE.SERVFAIL);
        }
      }
      return raw;
    } finally {
      this.#inFlight--;
    }
  }

  /** The first upstream answer (raw), or undefined when none answered. */
  async #resolve(msg: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
    const timeout = this.#opts.timeoutMs ?? 2000;
    for (const up of this.#opts.upstreams) {
      const raw = await udpQuery(up, msg, timeout).catch(() => undefined);
      if (!raw) continue;
      // TC bit: the answer did not fit; a TCP client can take the whole one.
      if (overTcp && raw.length > 2 && (raw[2]! & 0x02) !== 0) {
        const full = await tcpQuery(up, msg, timeout).catch(() => undefined);
        if (full) return full;
      }
      return raw;
    }
    return undefined;
  }
}

function errorReply(query: Packet, rcode: number): Buffer {
  // Flags: QR (response), RD copied, RA; rcode in the low 4 bits.
  const rd = (query.flags ?? 0) & 0x0100;
  return dnsPacket.encode({
    type: 'response',
    id: query.id ?? 0,
    flags: 0x8000 | rd | 0x0080 | rcode,
    questions: query.questions ?? [],
  });
}

function udpQuery(up: Upstream, msg: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket(net.isIPv6(up.host) ? 'udp6' : 'udp4');
    const id = msg.readUInt16BE(0);
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error('timeout'));
    }, timeoutMs);
    sock.on('error', (err) => {
      clearTimeout(timer);
      sock.close();
      reject(err);
    });
    sock.on('message', (reply, rinfo) => {
      // Only the upstream's answer to this query (the socket's random port guards the rest).
      if (rinfo.port !== up.port || reply.length < 12 || reply.readUInt16BE(0) !== id) return;
      clearTimeout(timer);
      sock.close();
      resolve(reply);
    });
    sock.send(msg, up.port, up.host);
  });
}

function tcpQuery(up: Upstream, msg: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: up.host, port: up.port });
    let buf = Buffer.alloc(0);
    const done = (err?: Error, reply?: Buffer): void => {
      clearTimeout(timer);
      sock.destroy();
      if (reply) resolve(reply);
      else reject(err ?? new Error('no answer'));
    };
    const timer = setTimeout(() => done(new Error('timeout')), timeoutMs);
    sock.on('error', (err) => done(err));
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        done(undefined, buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }
    });
    sock.on('end', () => done());
    const len = Buffer.alloc(2);
    len.writeUInt16BE(msg.length);
    sock.write(Buffer.concat([len, msg]));
  });
}
