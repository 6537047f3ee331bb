/**
 * The console's typed client of the FastVM v1 API, over the browser's `fetch` and `WebSocket`
 * (the TypeScript SDK runs on Node's http2/net modules, so it cannot run here). Wire shapes are
 * those of the contract (`memoryMiB`, `diskGiB`, …); errors keep the server's message as given.
 *
 * The API key lives in sessionStorage (one tab, gone when the tab closes) and travels only as the
 * `X-API-Key` header, never in a URL: the console WebSocket authenticates with a single-use
 * ticket from `POST /v1/vms/{id}/console-token`.
 * @module
 */

// ---- wire types (contract §3) -------------------------------------------------------------------

export interface FirewallRule {
  protocol: 'tcp' | 'udp';
  portStart: number;
  portEnd?: number;
  sourceCidrs?: string[];
  description?: string;
}

export interface FirewallPolicy {
  mode: 'open' | 'restricted';
  ingress: FirewallRule[];
}

export interface Ttl {
  seconds: number;
  action: 'pause' | 'delete';
}

export interface Vm {
  id: string;
  name: string;
  status: string;
  cpu: number;
  memoryMiB: number;
  diskGiB: number;
  createdAt: string;
  machineName: string;
  sourceName: string;
  publicIpv6: string | null;
  metadata: Record<string, string>;
  firewall: FirewallPolicy;
  effectiveFirewall: FirewallPolicy;
  envVars: Record<string, string>;
  statusMessage?: string;
  ttl: Ttl | null;
  expiresAtMs?: number;
  ttlRemainingMs?: number;
  pausedAt: string | null;
  sourceSnapshotId?: string | null;
}

export interface Snapshot {
  id: string;
  name: string;
  vmId: string;
  status: string;
  createdAt: string;
  machineName: string;
  sourceSnapshotId?: string | null;
  envVars?: Record<string, string>;
}

export interface LineageNode {
  type: 'snapshot' | 'vm';
  id: string;
  deleted: boolean;
  name?: string;
  status?: string;
  createdAt?: string;
  children: LineageNode[];
}

export interface Lineage {
  ancestors: LineageNode[];
  descendants: LineageNode[];
  truncated?: boolean;
}

export interface Service {
  name: string;
  port: number;
  h2c: boolean;
  url: string;
}

export interface QuotaValues {
  vcpu: number;
  memoryMiB: number;
  diskGiB: number;
  snapshotCount: number;
  volumeCount: number;
  volumeGiB: number;
}

export interface OrgQuotas {
  orgId: string;
  limits: QuotaValues;
  usage: QuotaValues;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  durationMs: number;
}

export interface ExecExit {
  exitCode: number;
  timedOut: boolean;
  durationMs: number;
}

/** Builds, imports and volumes are read generically: their shapes are still being settled. */
export type Item = Record<string, unknown> & { id?: string };

export interface LaunchParams {
  machineType?: string;
  snapshotId?: string;
  name?: string;
  ttl?: Ttl;
}

// ---- the key ------------------------------------------------------------------------------------

const KEY_ITEM = 'fastvm.apiKey';

export function savedKey(): string | null {
  return sessionStorage.getItem(KEY_ITEM);
}

export function saveKey(key: string): void {
  sessionStorage.setItem(KEY_ITEM, key);
}

export function forgetKey(): void {
  sessionStorage.removeItem(KEY_ITEM);
}

/** Called when the server refuses the saved key (revoked while signed in). */
let onUnauthorized: (error: ApiError) => void = () => {};
export function setUnauthorizedHandler(handler: (error: ApiError) => void): void {
  onUnauthorized = handler;
}

// ---- requests -----------------------------------------------------------------------------------

/** A non-2xx answer: `message` is the server's `error` text, as given. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code?: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

async function toApiError(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: unknown; message?: unknown; code?: unknown };
    const message =
      typeof body.error === 'string'
        ? body.error
        : typeof body.message === 'string'
          ? body.message
          : text;
    return new ApiError(
      res.status,
      message,
      typeof body.code === 'string' ? body.code : undefined,
      typeof (body as { field?: unknown }).field === 'string'
        ? (body as { field: string }).field
        : undefined,
    );
  } catch {
    return new ApiError(res.status, text || res.statusText);
  }
}

function headers(key: string | null, extra: Record<string, string> = {}): Headers {
  const h = new Headers(extra);
  if (key) h.set('x-api-key', key);
  return h;
}

/** One API call with the saved key (or `key`); JSON in, JSON out. */
export async function call<T>(
  method: string,
  path: string,
  body?: unknown,
  opts: { key?: string; signal?: AbortSignal; accept?: string } = {},
): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: headers(opts.key ?? savedKey(), {
      accept: opts.accept ?? 'application/json',
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    }),
    body: body !== undefined ? JSON.stringify(body) : null,
    signal: opts.signal ?? null,
    credentials: 'omit',
    cache: 'no-store',
  });
  if (!res.ok) {
    const error = await toApiError(res);
    if (res.status === 401 && opts.key === undefined) onUnauthorized(error);
    throw error;
  }
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

const seg = encodeURIComponent;

// ---- org ----------------------------------------------------------------------------------------

export const quotas = (key?: string) =>
  call<OrgQuotas>('GET', '/v1/org/quotas', undefined, key ? { key } : {});

/**
 * A list the server may not have yet (builds, imports, volumes): the array, or null when the
 * server answers 404 or 501 (the section is then hidden). Other errors propagate.
 */
export async function optionalList(path: string): Promise<Item[] | null> {
  try {
    const list = await call<unknown>('GET', path);
    return Array.isArray(list) ? (list as Item[]) : null;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 501)) return null;
    throw err;
  }
}

// ---- VMs ----------------------------------------------------------------------------------------

export const listVms = () => call<Vm[]>('GET', '/v1/vms');
export const getVm = (id: string) => call<Vm>('GET', `/v1/vms/${seg(id)}`);
export const launchVm = (params: LaunchParams) => call<Vm>('POST', '/v1/vms', params);
export const updateVm = (id: string, patch: { name?: string; ttl?: Ttl | null }) =>
  call<Vm>('PATCH', `/v1/vms/${seg(id)}`, patch);
export const deleteVm = (id: string) => call<unknown>('DELETE', `/v1/vms/${seg(id)}`);
export const pauseVm = (id: string) => call<Vm>('POST', `/v1/vms/${seg(id)}/pause`);
export const resumeVm = (id: string) => call<Vm>('POST', `/v1/vms/${seg(id)}/resume`);
export const refreshTtl = (id: string) => call<Vm>('POST', `/v1/vms/${seg(id)}/ttl/refresh`);
export const setFirewall = (id: string, policy: FirewallPolicy) =>
  call<Vm>('PUT', `/v1/vms/${seg(id)}/firewall`, policy);

export const listServices = (id: string) => call<Service[]>('GET', `/v1/vms/${seg(id)}/services`);
export const addService = (id: string, s: { name: string; port: number; h2c: boolean }) =>
  call<Service>('POST', `/v1/vms/${seg(id)}/services`, s);
export const removeService = (id: string, name: string) =>
  call<void>('DELETE', `/v1/vms/${seg(id)}/services/${seg(name)}`, undefined, { accept: '*/*' });

export const exec = (id: string, command: string[], timeoutSec?: number) =>
  call<ExecResult>('POST', `/v1/vms/${seg(id)}/exec`, {
    command,
    ...(timeoutSec ? { timeoutSec } : {}),
  });

function base64Bytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Runs `command` with streamed output (`Accept: application/x-ndjson`, contract §4.2.10):
 * `onBytes` gets each chunk of each stream as it arrives; resolves with the exit event.
 */
export async function execStreamBytes(
  id: string,
  command: string[],
  onBytes: (stream: 'stdout' | 'stderr', bytes: Uint8Array) => void,
  signal?: AbortSignal,
): Promise<ExecExit> {
  const res = await fetch(`/v1/vms/${seg(id)}/exec`, {
    method: 'POST',
    headers: headers(savedKey(), {
      accept: 'application/x-ndjson',
      'content-type': 'application/json',
    }),
    body: JSON.stringify({ command }),
    signal: signal ?? null,
    credentials: 'omit',
    cache: 'no-store',
  });
  if (!res.ok || !res.body) throw await toApiError(res);
  const lines = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    buffered += value;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line === '') continue;
      const event = JSON.parse(line) as {
        t: string;
        d?: string;
        c?: number;
        to?: boolean;
        ms?: number;
      };
      if (event.t === 'o' || event.t === 'e') {
        if (event.d) onBytes(event.t === 'o' ? 'stdout' : 'stderr', base64Bytes(event.d));
      } else if (event.t === 'x') {
        return { exitCode: event.c ?? 0, timedOut: event.to === true, durationMs: event.ms ?? 0 };
      }
    }
  }
  throw new ApiError(502, 'the exec stream ended without an exit event');
}

/** `execStreamBytes` with each stream decoded as UTF-8 text (split characters kept whole). */
export function execStream(
  id: string,
  command: string[],
  onOutput: (stream: 'stdout' | 'stderr', text: string) => void,
  signal?: AbortSignal,
): Promise<ExecExit> {
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  return execStreamBytes(
    id,
    command,
    (stream, bytes) => {
      const text = decoders[stream].decode(bytes, { stream: true });
      if (text) onOutput(stream, text);
    },
    signal,
  );
}

/** Opens the VM's console WebSocket with a single-use ticket (never the API key). */
export async function openConsole(id: string, cols: number, rows: number): Promise<WebSocket> {
  const grant = await call<{ token: string; websocketPath: string }>(
    'POST',
    `/v1/vms/${seg(id)}/console-token`,
  );
  const url = /^wss?:\/\//.test(grant.websocketPath)
    ? new URL(grant.websocketPath)
    : new URL(grant.websocketPath, location.href);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  if (url.protocol === 'https:') url.protocol = 'wss:';
  url.searchParams.set('session', grant.token);
  url.searchParams.set('cols', String(cols));
  url.searchParams.set('rows', String(rows));
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  return socket;
}

// ---- files (contract §6) ------------------------------------------------------------------------

interface Presign {
  uploadUrl: string;
  downloadUrl: string;
  maxUploadBytes: number;
}

/**
 * Presigned `/storage/…` URLs, as this page must call them: on its own origin (the API port
 * serves `/storage/` too; the URL's signature covers path and query only). The guest keeps using
 * the URL as minted, which may name the guest-facing storage listener.
 */
function sameOrigin(url: string): string {
  const u = new URL(url, location.href);
  return u.pathname.startsWith('/storage/') ? u.pathname + u.search : url;
}

export async function uploadFile(id: string, file: File, remotePath: string): Promise<void> {
  const p = await call<Presign>('POST', `/v1/vms/${seg(id)}/files/presign`, { path: remotePath });
  if (file.size > p.maxUploadBytes) {
    throw new ApiError(
      413,
      `${file.name} is larger than the VM's disk (${p.maxUploadBytes} bytes)`,
    );
  }
  const put = await fetch(sameOrigin(p.uploadUrl), {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: file,
    credentials: 'omit',
  });
  if (!put.ok) throw await toApiError(put);
  const result = await call<ExecResult>('POST', `/v1/vms/${seg(id)}/files/fetch`, {
    url: p.downloadUrl,
    path: remotePath,
    timeoutSec: 600,
  });
  if (result.exitCode !== 0 || result.timedOut) {
    throw new ApiError(502, result.stderr.trim() || `fetch into the VM exited ${result.exitCode}`);
  }
}

/**
 * A guest file's bytes, streamed out by a `cat` exec (as the SDK and CLI do): works whether or
 * not the VM has networking, which the presigned flow's guest-side `curl` would need.
 */
export async function downloadFile(id: string, remotePath: string): Promise<Blob> {
  const parts: Uint8Array<ArrayBuffer>[] = [];
  let stderr = '';
  const exit = await execStreamBytes(id, ['cat', '--', remotePath], (stream, bytes) => {
    if (stream === 'stdout') parts.push(bytes as Uint8Array<ArrayBuffer>);
    else stderr += new TextDecoder().decode(bytes);
  });
  if (exit.exitCode !== 0 || exit.timedOut) {
    throw new ApiError(502, stderr.trim() || `cat exited ${exit.exitCode}`);
  }
  return new Blob(parts, { type: 'application/octet-stream' });
}

// ---- snapshots ----------------------------------------------------------------------------------

export const listSnapshots = () => call<Snapshot[]>('GET', '/v1/snapshots');
export const createSnapshot = (vmId: string, name?: string) =>
  call<Snapshot>('POST', '/v1/snapshots', { vmId, ...(name ? { name } : {}) });
export const renameSnapshot = (id: string, name: string) =>
  call<Snapshot>('PATCH', `/v1/snapshots/${seg(id)}`, { name });
export const deleteSnapshot = (id: string) => call<unknown>('DELETE', `/v1/snapshots/${seg(id)}`);
export const forkSnapshot = (id: string, count: number, namePrefix?: string) =>
  call<{ vms: Vm[] }>('POST', `/v1/snapshots/${seg(id)}/fork`, {
    count,
    ...(namePrefix ? { namePrefix } : {}),
  });
export const lineage = (id: string) => call<Lineage>('GET', `/v1/snapshots/${seg(id)}/lineage`);
