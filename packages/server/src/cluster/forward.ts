/**
 * The forwarding layer of a cluster: one Fastify `preValidation` hook (`ClusterRouter.route`)
 * that decides, per request, which host serves it, and streams the request there and the
 * answer back when it is another host. Routes know nothing of it.
 *
 * - Operations on a VM — every method under `/v1/vms/{id}/…` (exec, streaming exec, exec
 *   sessions, files, console token and console WebSocket, pause/resume, firewall, services,
 *   volumes, TTL) and PATCH/DELETE `/v1/vms/{id}` — run on the VM's host. `POST /v1/snapshots`
 *   runs on the host of its `vmId`, `DELETE /v1/snapshots/{id}` on the host that took it.
 * - Launch and restore (`POST /v1/vms`) and fork (`POST /v1/snapshots/{id}/fork`) are placed
 *   (`placement.ts`): by free memory and vCPUs, preferring hosts that hold the golden or the
 *   snapshot; a restore or fork without snapshot mobility goes to the host that took the
 *   snapshot. With mobility a fork is coordinated by the host asked and spread
 *   (`fork-spread.ts`).
 * - Everything else (lists, reads, org, keys, quotas) is served from the shared store by the host
 *   that got it.
 * - The forwarded request carries the cluster token and this host's id; the receiving host
 *   authenticates the caller's API key again (org scoping stays its own) and serves it without
 *   forwarding again. Its answer (status, headers, streamed body; or the WebSocket's bytes) is
 *   passed through as it comes.
 * - A VM whose host is `lost` is served here from the store (its row says `error`); a host that
 *   is not heartbeating but not yet lost, or that cannot be reached within `connectTimeoutMs`,
 *   gets a 503 `unavailable` at once.
 * @module
 */
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { MACHINES, isMachineType, type SnapshotRecord } from '../domain/index.js';
import { ApiError } from '../errors.js';
import { resolveSnapshot, resolveVm } from '../services/resolve.js';
import type { Store } from '../store/index.js';
import type { HostInfo, HostRegistry } from './host-registry.js';
import { place, type PlacementRequest } from './placement.js';
import { CLUSTER_TOKEN_HEADER, clusterTokenMatches, type SnapshotMobility } from './seams.js';

/** Set on a forwarded request: the id of the host that forwarded it. */
export const FORWARDED_BY_HEADER = 'x-fastvm-forwarded-by';
/** On a forwarded answer: the host that served it. */
export const SERVED_BY_HEADER = 'x-fastvm-host';

/** Headers that belong to one connection (RFC 9110 §7.6.1), never passed on. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'http2-settings',
  'host',
  'content-length',
]);

/** How long the host list is reused between requests. */
const HOSTS_CACHE_MS = 500;

/** Inputs of `ClusterRouter`. */
export interface ClusterRouterOptions {
  registry: HostRegistry;
  store: Store;
  secret: string;
  logger: Logger;
  /** Whether this host's runtime holds the snapshot (`Runtime.hasSnapshot`). */
  hasSnapshot: (snapshotId: string) => Promise<boolean>;
  /** Snapshot mobility (absent: a restore runs on the host that took the snapshot). */
  mobility?: SnapshotMobility;
  /** Default 3000 ms. */
  connectTimeoutMs?: number;
}

/** See the module comment. */
export class ClusterRouter {
  readonly #o: ClusterRouterOptions;
  #hosts: { at: number; list: Promise<HostInfo[]> } | undefined;
  /**
   * What this host has placed and not yet seen answered, per host: added to the registry's
   * usage, so that concurrent placements from here spread instead of all picking the host that
   * looked emptiest.
   */
  readonly #inFlight = new Map<string, { memoryMiB: number; vcpu: number }>();

  constructor(opts: ClusterRouterOptions) {
    this.#o = opts;
  }

  get selfId(): string {
    return this.#o.registry.hostId;
  }

  /** Whether the request was forwarded to us by a peer (with the cluster's token). */
  isForwarded(request: FastifyRequest): boolean {
    return (
      request.headers[FORWARDED_BY_HEADER] !== undefined &&
      clusterTokenMatches(this.#o.secret, request.headers[CLUSTER_TOKEN_HEADER])
    );
  }

  /**
   * The `preValidation` hook: forwards the request to the host that serves it and answers
   * true (the reply is then taken over), or answers false to serve it here.
   */
  async route(request: FastifyRequest, reply: FastifyReply): Promise<boolean> {
    const auth = request.auth;
    if (this.isForwarded(request)) {
      reply.header(SERVED_BY_HEADER, this.selfId);
      return false;
    }
    const placed: { host?: string; memoryMiB: number; vcpu: number } = { memoryMiB: 0, vcpu: 0 };
    // Public routes of a VM (the console WebSocket, whose credential is its single-use token
    // held by the VM's host) go by VM id alone; the serving host checks the credential.
    const target = auth
      ? await this.#target(request, auth.orgId, placed)
      : await this.#publicTarget(request);
    if (placed.host) {
      const id = placed.host;
      const cur = this.#inFlight.get(id) ?? { memoryMiB: 0, vcpu: 0 };
      cur.memoryMiB += placed.memoryMiB;
      cur.vcpu += placed.vcpu;
      this.#inFlight.set(id, cur);
      reply.raw.once('close', () => {
        cur.memoryMiB -= placed.memoryMiB;
        cur.vcpu -= placed.vcpu;
        if (cur.memoryMiB <= 0 && cur.vcpu <= 0) this.#inFlight.delete(id);
      });
    }
    if (!target || target === this.selfId) {
      reply.header(SERVED_BY_HEADER, this.selfId);
      return false;
    }
    const host = (await this.#hostList(true)).find((h) => h.id === target);
    if (!host || host.state === 'lost') {
      // Its VMs are `error` in the store: this host answers from there.
      reply.header(SERVED_BY_HEADER, this.selfId);
      return false;
    }
    if (!host.live) {
      throw new ApiError(
        'unavailable',
        `host ${host.id} that serves this request is not heartbeating (last at ${host.heartbeatAt}); ` +
          'try again later',
        { hostId: host.id },
        true,
        { retryAfterSec: 5 },
      );
    }
    await this.#forward(request, reply, host);
    return true;
  }

  /** A route without an API key under `/v1/vms/{id}/…`: the VM's host, by id only. */
  async #publicTarget(request: FastifyRequest): Promise<string | undefined> {
    const m = /^\/v1\/vms\/([^/]+)\/.+$/.exec(request.url.split('?')[0] ?? '');
    if (!m) return undefined;
    const vm = await this.#o.store.findLiveVm(decode(m[1]!));
    return vm ? ((await this.#o.registry.vmHost(vm.id)) ?? undefined) : undefined;
  }

  /** The id of the host that should serve the request (undefined: this one). */
  async #target(
    request: FastifyRequest,
    orgId: string,
    placed: { host?: string; memoryMiB: number; vcpu: number },
  ): Promise<string | undefined> {
    const path = (request.url.split('?')[0] ?? '').replace(/\/+$/, '');
    const method = request.method;
    const { store, registry } = this.#o;
    const vmOp = /^\/v1\/vms\/([^/]+)(\/.*)?$/.exec(path);
    if (vmOp) {
      if (!vmOp[2] && (method === 'GET' || method === 'HEAD')) return undefined;
      const vm = await resolveVm(store, orgId, decode(vmOp[1]!)).catch(() => undefined);
      return vm ? ((await registry.vmHost(vm.id)) ?? undefined) : undefined;
    }
    const body = (request.body ?? {}) as Record<string, unknown>;
    if (path === '/v1/vms' && method === 'POST') {
      if (typeof body.snapshotId === 'string') {
        const snap = await resolveSnapshot(store, orgId, body.snapshotId).catch(() => undefined);
        return snap && this.#placeRestore(snap, 1, placed);
      }
      if (typeof body.machineType !== 'string' || !isMachineType(body.machineType)) {
        return undefined;
      }
      const spec = MACHINES[body.machineType];
      const holders = await registry.goldenHolders(body.machineType);
      return this.#place({ memoryMiB: spec.memoryMiB, vcpu: spec.vcpus, prefer: holders }, placed);
    }
    if (path === '/v1/snapshots' && method === 'POST' && typeof body.vmId === 'string') {
      const vm = await resolveVm(store, orgId, body.vmId).catch(() => undefined);
      return vm ? ((await registry.vmHost(vm.id)) ?? undefined) : undefined;
    }
    const snapOp = /^\/v1\/snapshots\/([^/]+)(\/fork)?$/.exec(path);
    if (snapOp && ((method === 'DELETE' && !snapOp[2]) || (method === 'POST' && snapOp[2]))) {
      const snap = await resolveSnapshot(store, orgId, decode(snapOp[1]!)).catch(() => undefined);
      if (!snap) return undefined;
      if (method === 'DELETE') return (await registry.snapshotHost(snap.id)) ?? undefined;
      // With mobility a fork is dealt out over the hosts from here (`fork-spread.ts`).
      if (this.#o.mobility) return undefined;
      const count = Number(body.count);
      if (!Number.isSafeInteger(count) || count < 1) return undefined;
      return this.#placeRestore(snap, count, placed);
    }
    return undefined;
  }

  /** A restore (or fork of `count`) of `snap`: where it can run, and where it should. */
  async #placeRestore(
    snap: SnapshotRecord,
    count: number,
    placed: { host?: string; memoryMiB: number; vcpu: number },
  ): Promise<string | undefined> {
    if (snap.status !== 'ready') return undefined; // the local route explains the 409
    const { registry, mobility } = this.#o;
    const taker = await registry.snapshotHost(snap.id);
    const req: PlacementRequest = { memoryMiB: snap.memoryMiB * count, vcpu: snap.cpu * count };
    if (mobility) {
      req.prefer = new Set(await mobility.holders(snap.id));
      if (taker) (req.prefer as Set<string>).add(taker);
    } else if (taker) {
      req.only = new Set([taker]);
    }
    const target = await this.#place(req, placed, snap.id);
    if (target === this.selfId && mobility && !(await this.#o.hasSnapshot(snap.id))) {
      await mobility.ensureLocal(snap.id);
    }
    return target;
  }

  async #place(
    req: PlacementRequest,
    placed: { host?: string; memoryMiB: number; vcpu: number },
    snapshotId?: string,
  ): Promise<string> {
    const hosts = (await this.#hostList(false)).map((h) => {
      const pending = this.#inFlight.get(h.id);
      return pending
        ? {
            ...h,
            memoryUsedMiB: h.memoryUsedMiB + pending.memoryMiB,
            vcpuUsed: h.vcpuUsed + pending.vcpu,
          }
        : h;
    });
    const result = place(hosts, req);
    if ('host' in result) {
      placed.host = result.host.id;
      placed.memoryMiB = req.memoryMiB;
      placed.vcpu = req.vcpu;
      return result.host.id;
    }
    const what = snapshotId ? `restore of snapshot ${snapshotId}` : 'launch';
    if (result.reason === 'no_room') {
      throw new ApiError(
        'host_capacity',
        `no host can take this ${what}: ${result.detail}`,
        {},
        true,
        {
          retryAfterSec: 10,
        },
      );
    }
    throw new ApiError('unavailable', `no host can run this ${what}: ${result.detail}`, {}, true, {
      retryAfterSec: 10,
    });
  }

  /** The registry's host list; `cached`: a list up to `HOSTS_CACHE_MS` old will do. */
  #hostList(cached: boolean): Promise<HostInfo[]> {
    const now = Date.now();
    if (!cached || !this.#hosts || now - this.#hosts.at > HOSTS_CACHE_MS) {
      const list = this.#o.registry.list();
      this.#hosts = { at: now, list };
      list.catch(() => {
        if (this.#hosts?.list === list) this.#hosts = undefined;
      });
    }
    return this.#hosts.list;
  }

  /** Streams the request to `host` and its answer back. */
  async #forward(request: FastifyRequest, reply: FastifyReply, host: HostInfo): Promise<void> {
    const raw = request.raw;
    const base = new URL(host.advertiseUrl);
    const upgrade = raw.httpVersionMajor === 1 && (raw as { upgrade?: boolean }).upgrade === true;
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(raw.headers)) {
      if (name.startsWith(':') || value === undefined || HOP_BY_HOP.has(name)) continue;
      headers[name] = value;
    }
    headers.host = base.host;
    headers['x-forwarded-host'] ??= raw.headers.host ?? raw.headers[':authority'];
    headers[CLUSTER_TOKEN_HEADER] = this.#o.secret;
    headers[FORWARDED_BY_HEADER] = this.selfId;
    headers['x-request-id'] = request.id;
    let body: Buffer | undefined;
    if (upgrade) {
      headers.connection = 'Upgrade';
      headers.upgrade = raw.headers.upgrade;
    } else if (request.body !== undefined) {
      body = Buffer.from(JSON.stringify(request.body));
      headers['content-type'] = 'application/json';
      headers['content-length'] = body.length;
    }
    const log = request.log.child({ forwardTo: host.id });
    log.debug({ url: raw.url }, 'forwarding to the host that serves it');
    reply.hijack();
    const client = (base.protocol === 'https:' ? https : http).request({
      protocol: base.protocol,
      hostname: base.hostname.replace(/^\[|\]$/g, ''),
      port: base.port || (base.protocol === 'https:' ? 443 : 80),
      method: request.method,
      path: raw.url,
      headers,
      agent: false,
    });
    const connectTimeoutMs = this.#o.connectTimeoutMs ?? 3000;
    const connectTimer = setTimeout(() => {
      client.destroy(
        Object.assign(new Error(`no connection within ${connectTimeoutMs} ms`), {
          code: 'ETIMEDOUT',
        }),
      );
    }, connectTimeoutMs);
    client.once('socket', (s: Socket) => {
      if (!s.connecting) clearTimeout(connectTimer);
      else s.once('connect', () => clearTimeout(connectTimer));
    });
    const fail = (err: Error) => {
      clearTimeout(connectTimer);
      const res = reply.raw;
      if (upgrade) {
        if (!raw.socket.destroyed) {
          const e = unreachable(host, err);
          const text = JSON.stringify({ ...e.toBody(), requestId: request.id });
          raw.socket.end(
            `HTTP/1.1 ${e.statusCode} Service Unavailable\r\ncontent-type: application/json; ` +
              `charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
          );
        }
        return;
      }
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      const e = unreachable(host, err);
      log.warn({ err }, e.message);
      const text = JSON.stringify({ ...e.toBody(), requestId: request.id });
      res.writeHead(e.statusCode, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': Buffer.byteLength(text),
        'x-request-id': request.id,
        'x-should-retry': 'true',
        'retry-after': '5',
      });
      res.end(text);
    };
    client.on('error', fail);
    if (upgrade) {
      this.#relayUpgrade(client, raw.socket, fail);
      client.end();
      return;
    }
    client.on('response', (upstream) => {
      clearTimeout(connectTimer);
      const out: http.OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(upstream.headers)) {
        if (value === undefined || (HOP_BY_HOP.has(name) && name !== 'content-length')) continue;
        out[name] = value;
      }
      const res = reply.raw;
      res.writeHead(upstream.statusCode ?? 502, out);
      // Streamed (NDJSON exec output arrives as the guest writes it).
      res.flushHeaders?.();
      upstream.on('data', (chunk: Buffer) => {
        if (!res.write(chunk)) {
          upstream.pause();
          res.once('drain', () => upstream.resume());
        }
      });
      upstream.on('end', () => res.end());
      upstream.on('error', (err) => res.destroy(err));
    });
    // The caller went away: so does the forwarded request (an exec's stream ends the command).
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) client.destroy();
    });
    client.end(body);
  }

  /** A WebSocket (or other HTTP/1.1 upgrade) to the serving host, bytes relayed both ways. */
  #relayUpgrade(client: http.ClientRequest, socket: Socket, fail: (err: Error) => void): void {
    client.on('upgrade', (res, upstream, head) => {
      const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}`];
      for (let i = 0; i < res.rawHeaders.length; i += 2) {
        lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
      }
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) socket.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
      const close = () => {
        upstream.destroy();
        socket.destroy();
      };
      upstream.on('error', close).on('close', close);
      socket.on('error', close).on('close', close);
    });
    // Refused (401, 404, 409 …): passed on as a plain answer, then the connection closes.
    client.on('response', (res) => {
      const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}`];
      for (let i = 0; i < res.rawHeaders.length; i += 2) {
        const name = res.rawHeaders[i]!.toLowerCase();
        if (name === 'connection' || name === 'keep-alive' || name === 'transfer-encoding')
          continue;
        lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
      }
      lines.push('connection: close');
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks);
        if (!lines.some((l) => /^content-length:/i.test(l))) {
          lines.push(`content-length: ${text.length}`);
        }
        socket.end(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`), text]));
      });
      res.on('error', fail);
    });
  }
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** The 503 for a host that could not be reached. */
function unreachable(host: HostInfo, err: Error): ApiError {
  return new ApiError(
    'unavailable',
    `host ${host.id} that serves this request cannot be reached (${(err as NodeJS.ErrnoException).code ?? err.message}); try again later`,
    { hostId: host.id },
    true,
    { cause: err, retryAfterSec: 5 },
  );
}
