import './internal/polyfill.js';
import { consoleUrl, openConsole, type ConsoleSession } from './console.js';
import fsp from 'node:fs/promises';
import {
  APIError,
  BuildError,
  FileTransferError,
  FastVMError,
  SnapshotError,
  SnapshotNotReadyError,
  TimeoutError,
  VMLaunchError,
  VMNotReadyError,
  ConnectionError,
} from './core/errors.js';
import {
  Transport,
  type ConnectionStats,
  type TLSOptions,
  type WireRequest,
  type StreamResponse,
  type WireResponse,
} from './core/transport.js';
import {
  asArray,
  commandResultFromWire,
  execSessionFromWire,
  firewallToWire,
  lineageFromWire,
  pricingFromWire,
  quotasFromWire,
  serviceFromWire,
  snapshotFromWire,
  sshKeyFromWire,
  sshKeysFromWire,
  vmFromWire,
  volumeFromWire,
  attachmentFromWire,
} from './internal/wire.js';
import {
  downloadDirectory,
  downloadFile,
  remoteKind,
  uploadDirectory,
  uploadFile,
  type ExecOps,
} from './internal/files.js';
import { backoffMs, readEnv, retryAfterMs, sleep } from './internal/utils.js';
import type {
  BuildEvent,
  BuildStreamItem,
  SnapshotImport,
  CommandResult,
  ExecEvent,
  ExecSession,
  FirewallPolicy,
  FirewallPolicyV2,
  Lineage,
  MachineType,
  OrgQuotaUsage,
  PatchFirewallPolicy,
  Pricing,
  Service,
  ServiceOptions,
  Snapshot,
  SnapshotRef,
  SshKey,
  TransferProgress,
  TransferResult,
  VM,
  VMRef,
  VMTtl,
  Volume,
  VolumeAttachment,
  VolumeMount,
} from './types.js';
import { VERSION } from './version.js';
import { zipDirectory, zipEntries } from './internal/zip.js';

/** The base URL used when neither the `baseUrl` option nor `FASTVM_BASE_URL` is set. */
export const DEFAULT_BASE_URL = 'https://api.fastvm.org';
/** Default client timeout in milliseconds (per call, and the wait budget of blocking calls). */
export const DEFAULT_TIMEOUT_MS = 300_000;
/** Default number of retries for retryable failures. */
export const DEFAULT_MAX_RETRIES = 2;

/** Options of the {@link FastVM} constructor. */
export interface ClientOptions {
  /** API key sent as `X-API-Key`. Defaults to `FASTVM_API_KEY`; required. */
  apiKey?: string | undefined;
  /** API base URL. Defaults to `FASTVM_BASE_URL`, then `https://api.fastvm.org`. An empty value counts as unset. */
  baseUrl?: string | undefined;
  /** Default timeout of every call in milliseconds, retries included (default 300 000). */
  timeout?: number | undefined;
  /** How many times a retryable failure is retried (default 2). */
  maxRetries?: number | undefined;
  /** Extra headers sent with every request. */
  defaultHeaders?: Record<string, string> | undefined;
  /**
   * Which firewall shape the server answers in (contract §3.8): 1 (default) fills `VM.firewall`
   * with the v1 ingress policy, 2 fills `VM.firewallV2` with ingress, egress and DNS policy
   * (sent as `X-FastVM-Firewall-Version`). Either shape can be written in both modes.
   */
  firewallVersion?: 1 | 2 | undefined;
  /** TLS settings for `https://` base URLs (e.g. a private CA). */
  tls?: TLSOptions | undefined;
}

/** Options accepted by every call. */
export interface RequestOptions {
  /** Cancels the call; it then rejects with an {@link AbortError}. */
  signal?: AbortSignal | undefined;
  /** Time budget of this call in milliseconds, retries included (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.launch}. */
export interface LaunchOptions extends RequestOptions {
  /** Machine type (default `c1m2`). */
  machine?: MachineType | undefined;
  /** VM name; the server generates one when omitted. */
  name?: string | undefined;
  /** Disk size in GiB (default: the machine's default). */
  diskGib?: number | undefined;
  /** Public IPv6 ingress firewall policy. */
  firewall?: FirewallPolicy | FirewallPolicyV2 | undefined;
  /** User metadata (string → string). */
  metadata?: Record<string, string> | undefined;
  /**
   * Environment variables of every command and console shell in the VM. Names match
   * `[A-Za-z_][A-Za-z0-9_]*`; values have no NUL, `\n` or `\r` (the server answers 400 otherwise).
   */
  envVars?: Record<string, string> | undefined;
  /** Time to live: after `seconds` of running the VM is paused or deleted. */
  ttl?: VMTtl | undefined;
  /** Volumes to attach once it runs (the VM's `volumes` say how each went). */
  volumes?: VolumeMount[] | undefined;
  /** How long to wait for the VM to be `running`, in milliseconds (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.stream}. */
export interface StreamOptions {
  /** Cancels the command: the request is reset and the server kills it. */
  signal?: AbortSignal | undefined;
  /** Server-side limit on the command's run time, in seconds. */
  timeoutSec?: number | undefined;
  /** Bytes written to the command's stdin (then closed); strings are sent as UTF-8. */
  stdin?: Buffer | Uint8Array | string | undefined;
  /** How long to wait for the server to start answering, in ms (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.execDetached}. */
export interface DetachedExecOptions extends RequestOptions {
  /** Server-side limit on the command's run time, in seconds. */
  timeoutSec?: number | undefined;
  /** Bytes written to the command's stdin (then closed); strings are sent as UTF-8. */
  stdin?: Buffer | Uint8Array | string | undefined;
}

/** Options of {@link FastVM.attach}. */
export interface AttachOptions {
  /**
   * Replay output from this byte offset (stdout and stderr counted together; default 0). The
   * server keeps the last 1 MiB: an older offset starts at the oldest byte kept (see the events'
   * `offset`).
   */
  fromOffset?: number | undefined;
  /** Stops following; the command goes on. */
  signal?: AbortSignal | undefined;
  /** How long to wait for the server to start answering, in ms (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.upload} and {@link FastVM.download}. */
export interface TransferOptions {
  /** Called as bytes move (at least once at the start and once at the end). */
  onProgress?: ((progress: TransferProgress) => void) | undefined;
  /** Cancels the transfer; nothing is left at the destination. */
  signal?: AbortSignal | undefined;
}

/** Options of {@link FastVM.restore}. */
export interface RestoreOptions extends RequestOptions {
  /** VM name; the server generates one when omitted. */
  name?: string | undefined;
  /** Overrides the firewall policy captured in the snapshot. */
  firewall?: FirewallPolicy | FirewallPolicyV2 | undefined;
  /** User metadata (string → string). */
  metadata?: Record<string, string> | undefined;
  /** Environment variables merged over the snapshot's (same rules as {@link LaunchOptions.envVars}). */
  envVars?: Record<string, string> | undefined;
  /** How long to wait for the VM to be `running`, in milliseconds (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.fork}. */
export interface ForkOptions extends RequestOptions {
  /** VM names are `<namePrefix>-1` … `<namePrefix>-<n>`; default: the snapshot's name. */
  namePrefix?: string | undefined;
  /** Every fork's firewall policy (default: the snapshot's). */
  firewall?: FirewallPolicy | FirewallPolicyV2 | undefined;
  /** Environment variables merged over the snapshot's, for every fork. */
  envVars?: Record<string, string> | undefined;
  /** User metadata of every fork. */
  metadata?: Record<string, string> | undefined;
  /** How long to wait for all of them, in milliseconds (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.run}. */
export interface RunOptions extends RequestOptions {
  /** Server-side limit on the command's run time, in seconds. */
  timeoutSec?: number | undefined;
  /** Client-side transport timeout in milliseconds (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.console}. */
export interface ConsoleOptions extends RequestOptions {
  /** Initial terminal width (with `rows`; default: the server's 80 × 24). */
  cols?: number | undefined;
  /** Initial terminal height. */
  rows?: number | undefined;
}

/** Options of {@link FastVM.snapshot}. */
export interface SnapshotOptions extends RequestOptions {
  /** Snapshot name; the server generates one when omitted or empty. */
  name?: string | undefined;
  /** How long to wait for the snapshot to be `ready`, in milliseconds (default: the client's `timeout`). */
  timeout?: number | undefined;
}

/** Options of {@link FastVM.build}. */
export interface BuildOptions extends WatchOptions {
  /** The Dockerfile's text; when omitted, `dockerfilePath` inside the context is used. */
  dockerfile?: string | undefined;
  /** Path of the Dockerfile inside the context (default `Dockerfile`). */
  dockerfilePath?: string | undefined;
  /** The build context: a local directory, or the bytes of a ZIP of it. */
  context?: string | Uint8Array | undefined;
  /** Name of the produced snapshot. */
  name?: string | undefined;
  buildArgs?: Record<string, string> | undefined;
  /** Multi-stage target (default: the last stage). */
  target?: string | undefined;
  machineType?: MachineType | undefined;
  diskGiB?: number | undefined;
}

/** Options of {@link FastVM.importImage}. */
export interface ImportImageOptions extends WatchOptions {
  name?: string | undefined;
  /** Default `linux/amd64`. */
  platform?: string | undefined;
  registryUsername?: string | undefined;
  registryPassword?: string | undefined;
  machineType?: MachineType | undefined;
  diskGiB?: number | undefined;
}

/** How a build is followed. */
export interface WatchOptions {
  /** Every new event (phases: preparing, pull, fetch_context, build, saving, done). */
  onEvent?: ((event: BuildEvent) => void) | undefined;
  /** Build output as it arrives (step headers, RUN output, cache hits). */
  onLog?: ((data: string) => void) | undefined;
  /** Aborting cancels the build on the server. */
  signal?: AbortSignal | undefined;
  /** Poll interval in milliseconds (default 500). */
  pollInterval?: number | undefined;
}

type Method = WireRequest['method'];

interface CallOptions {
  body?: unknown;
  signal?: AbortSignal | undefined;
  /** Absolute deadline (performance.now() clock). */
  deadline: number;
  /** Whether HTTP error responses may be retried (false for non-idempotent POSTs). */
  retryHttp: boolean;
}

const VM_READY = new Set(['running']);
const VM_TERMINAL = new Set(['error', 'stopped', 'deleting']);
const SNAPSHOT_READY = new Set(['ready', 'active']);
const SNAPSHOT_TERMINAL = new Set(['error', 'deleting', 'deleted']);
const POLL_INITIAL_MS = 100;
const POLL_MAX_MS = 1_000;

/**
 * Client for the FastVM API: launch, snapshot, restore and run commands in microVMs.
 *
 * All calls of one client share a single multiplexed HTTP/2 session (TLS with ALPN for `https://`,
 * cleartext prior knowledge for `http://`), opened by {@link FastVM.warmup} or by the first call and
 * reopened lazily if the server closes it. Servers that cannot speak HTTP/2 are reached over
 * HTTP/1.1 keep-alive instead.
 *
 * `launch`, `restore` and `snapshot` block until the resource is ready.
 *
 * @example
 * ```ts
 * await using client = new FastVM(); // reads FASTVM_API_KEY / FASTVM_BASE_URL
 * await client.warmup();
 * const vm = await client.launch({ machine: 'c1m2' });
 * const snap = await client.snapshot(vm, { name: 'my-snap' });
 * const restored = await client.restore(snap);
 * const result = await client.run(restored, 'echo hello');
 * console.log(result.stdout); // hello
 * ```
 */
export class FastVM {
  /** The API base URL in use. */
  readonly baseUrl: string;
  /** Default time budget of each call, in milliseconds. */
  readonly timeout: number;
  /** Retries for retryable failures. */
  readonly maxRetries: number;

  readonly #apiKey: string;
  readonly #transport: Transport;
  readonly #headers: Record<string, string>;
  readonly #tls: TLSOptions | undefined;

  /**
   * Creates a client. Nothing is sent until {@link FastVM.warmup} or the first call.
   *
   * @param options - API key, base URL, timeout, retries; see {@link ClientOptions}.
   * @throws {@link FastVMError} when no API key is given and `FASTVM_API_KEY` is unset or empty.
   */
  constructor(options: ClientOptions = {}) {
    const apiKey = nonEmpty(options.apiKey) ?? readEnv('FASTVM_API_KEY');
    if (apiKey === undefined) {
      throw new FastVMError(
        'No API key: set the FASTVM_API_KEY environment variable or pass it explicitly, as in new FastVM({ apiKey: "..." }).',
      );
    }
    this.#apiKey = apiKey;
    this.baseUrl = (
      nonEmpty(options.baseUrl) ??
      readEnv('FASTVM_BASE_URL') ??
      DEFAULT_BASE_URL
    ).replace(/\/+$/, '');
    this.timeout = positive(options.timeout, 'timeout') ?? DEFAULT_TIMEOUT_MS;
    const retries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!Number.isInteger(retries) || retries < 0)
      throw new FastVMError(`maxRetries must be an integer >= 0, got ${retries}`);
    this.maxRetries = retries;
    this.#transport = new Transport(this.baseUrl, { tls: options.tls });
    this.#tls = options.tls;
    this.#headers = {
      accept: 'application/json',
      'user-agent': `fastvm-typescript/${VERSION} node/${typeof process === 'undefined' ? 'unknown' : process.version}`,
      ...(options.firewallVersion === 2 ? { 'x-fastvm-firewall-version': '2' } : {}),
      ...lowerKeys(options.defaultHeaders ?? {}),
      'x-api-key': this.#apiKey,
    };
  }

  /**
   * Connection statistics: the negotiated protocol, how many sessions were opened, and request
   * counters. With HTTP/2, `sessionsOpened` stays at 1 however many calls run, unless the server
   * closed the session.
   */
  get stats(): ConnectionStats {
    return this.#transport.stats;
  }

  // ------------------------------------------------------------------------------------------------
  // Connection lifecycle
  // ------------------------------------------------------------------------------------------------

  /**
   * Opens the HTTP/2 session now and checks the server with `GET /healthz`, so that later calls
   * pay no handshake. Optional: the first call connects on its own.
   *
   * @param options - Signal and timeout.
   */
  async warmup(options: RequestOptions = {}): Promise<void> {
    const deadline = this.#deadline(options.timeout);
    await this.#transport.connect(remaining(deadline), options.signal);
    await this.#call('GET', '/healthz', { signal: options.signal, deadline, retryHttp: true });
  }

  /** Closes the session after in-flight calls finish. The client cannot be used afterwards. */
  async close(): Promise<void> {
    await this.#transport.close();
  }

  /** Closes the client at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ------------------------------------------------------------------------------------------------
  // VMs
  // ------------------------------------------------------------------------------------------------

  /**
   * Launches a new microVM and waits until it is `running`.
   *
   * Sends `POST /v1/vms` once (never retried after the server answered, since launching is not
   * idempotent), then polls `GET /v1/vms/{id}` with a short backoff unless the VM is already running.
   *
   * @param options - Machine type (default `c1m2`), name, disk size, firewall, metadata, envVars,
   *   TTL, wait timeout.
   * @returns The running VM.
   * @throws {@link VMLaunchError} if the VM ends in `error`, `stopped` or `deleting`.
   * @throws {@link VMNotReadyError} if it is not running within `timeout`.
   * @throws {@link QuotaExceededError} if the organisation's quota would be exceeded.
   */
  async launch(options: LaunchOptions = {}): Promise<VM> {
    const body: Record<string, unknown> = { machineType: options.machine ?? 'c1m2' };
    if (options.name !== undefined && options.name !== '') body['name'] = options.name;
    if (options.diskGib !== undefined) body['diskGiB'] = options.diskGib;
    if (options.firewall !== undefined) body['firewall'] = firewallToWire(options.firewall);
    if (options.metadata !== undefined) body['metadata'] = options.metadata;
    if (options.envVars !== undefined) body['envVars'] = { ...options.envVars };
    if (options.ttl !== undefined) body['ttl'] = { ...options.ttl };
    if (options.volumes !== undefined) body['volumes'] = options.volumes.map(volumeMountToWire);
    return this.#createVm(body, options);
  }

  /**
   * Restores a new VM from a snapshot and waits until it is `running`.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param options - Name, firewall override, metadata, envVars (merged over the snapshot's),
   *   wait timeout.
   * @returns The running VM.
   * @throws {@link VMLaunchError} if the VM ends in `error`, `stopped` or `deleting`.
   * @throws {@link VMNotReadyError} if it is not running within `timeout`.
   */
  async restore(snapshot: SnapshotRef, options: RestoreOptions = {}): Promise<VM> {
    const body: Record<string, unknown> = { snapshotId: idOf(snapshot, 'snapshot') };
    if (options.name !== undefined && options.name !== '') body['name'] = options.name;
    if (options.firewall !== undefined) body['firewall'] = firewallToWire(options.firewall);
    if (options.metadata !== undefined) body['metadata'] = options.metadata;
    if (options.envVars !== undefined) body['envVars'] = { ...options.envVars };
    return this.#createVm(body, options);
  }

  /**
   * Fetches the current state of a VM.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   * @throws {@link NotFoundError} if there is no such VM.
   */
  async get(vm: VMRef, options: RequestOptions = {}): Promise<VM> {
    return vmFromWire(await this.#get(`/v1/vms/${seg(vm, 'vm')}`, options));
  }

  /**
   * Lists the organisation's VMs.
   *
   * @param options - Signal and timeout.
   */
  async list(options: RequestOptions = {}): Promise<VM[]> {
    return asArray(await this.#get('/v1/vms', options)).map(vmFromWire);
  }

  /**
   * Deletes a VM.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   */
  async remove(vm: VMRef, options: RequestOptions = {}): Promise<void> {
    await this.#idempotent('DELETE', `/v1/vms/${seg(vm, 'vm')}`, undefined, options);
  }

  /**
   * Renames a VM.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param name - The new name.
   * @param options - Signal and timeout.
   * @returns The updated VM.
   */
  async rename(vm: VMRef, name: string, options: RequestOptions = {}): Promise<VM> {
    return vmFromWire(
      await this.#idempotent('PATCH', `/v1/vms/${seg(vm, 'vm')}`, { name }, options),
    );
  }

  /**
   * Replaces the VM's firewall policy. A v1 policy replaces the ingress policy (egress and DNS
   * policy stay); a v2 policy replaces all of it (missing blocks take the defaults).
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param policy - The new policy, v1 or v2.
   * @param options - Signal and timeout.
   * @returns The updated VM.
   */
  async setFirewall(
    vm: VMRef,
    policy: FirewallPolicy | FirewallPolicyV2,
    options: RequestOptions = {},
  ): Promise<VM> {
    const path = `/v1/vms/${seg(vm, 'vm')}/firewall`;
    return vmFromWire(await this.#idempotent('PUT', path, firewallToWire(policy), options));
  }

  /**
   * Partially updates the VM's firewall: only the given fields change (`ingress: []` clears rules;
   * with v2, each block given replaces that block).
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param patch - v1: mode and/or ingress rules; v2: any of `ingress`, `egress`, `dns`.
   * @param options - Signal and timeout.
   * @returns The updated VM.
   */
  async patchFirewall(
    vm: VMRef,
    patch: PatchFirewallPolicy | FirewallPolicyV2,
    options: RequestOptions = {},
  ): Promise<VM> {
    const path = `/v1/vms/${seg(vm, 'vm')}/firewall`;
    return vmFromWire(await this.#idempotent('PATCH', path, firewallToWire(patch), options));
  }

  // ------------------------------------------------------------------------------------------------
  // Published services
  // ------------------------------------------------------------------------------------------------

  /**
   * Lists the VM's published services, sorted by name, with their proxy URLs (and the bearer
   * token of `auth: 'token'` services).
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   */
  async listServices(vm: VMRef, options: RequestOptions = {}): Promise<Service[]> {
    const path = `/v1/vms/${seg(vm, 'vm')}/services`;
    return asArray(await this.#get(path, options)).map(serviceFromWire);
  }

  /**
   * Publishes a port of the VM through the proxy as `<name>--<vm id hex>.proxy.<domain>`. Also
   * opens the port in the VM's effective firewall. Repeating an identical call returns the
   * existing service (so it is retried like an idempotent call).
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param name - 1–29 characters: lowercase letters, digits and single hyphens.
   * @param port - Guest TCP port, 1024–65535.
   * @param options - `h2c`, `auth`, signal and timeout.
   * @throws {@link ConflictError} if a service of that name exists with other settings.
   * @throws {@link QuotaExceededError} past 16 services per VM.
   */
  async publishService(
    vm: VMRef,
    name: string,
    port: number,
    options: ServiceOptions & RequestOptions = {},
  ): Promise<Service> {
    const body: Record<string, unknown> = { name, port };
    if (options.h2c !== undefined) body['h2c'] = options.h2c;
    if (options.auth !== undefined) body['auth'] = options.auth;
    const path = `/v1/vms/${seg(vm, 'vm')}/services`;
    return serviceFromWire(await this.#idempotent('POST', path, body, options));
  }

  /**
   * Publishes or changes a service (`PUT`): the same values change nothing.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param name - The service's name.
   * @param port - Guest TCP port, 1024–65535.
   * @param options - `h2c` (default false), `auth` (omitted: unchanged), signal and timeout.
   */
  async updateService(
    vm: VMRef,
    name: string,
    port: number,
    options: ServiceOptions & RequestOptions = {},
  ): Promise<Service> {
    const body: Record<string, unknown> = { port };
    if (options.h2c !== undefined) body['h2c'] = options.h2c;
    if (options.auth !== undefined) body['auth'] = options.auth;
    const path = `/v1/vms/${seg(vm, 'vm')}/services/${encodeURIComponent(name)}`;
    return serviceFromWire(await this.#idempotent('PUT', path, body, options));
  }

  /**
   * Unpublishes a service (and closes its port in the effective firewall). Removing a service
   * that does not exist is not an error.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param name - The service's name.
   * @param options - Signal and timeout.
   */
  async removeService(vm: VMRef, name: string, options: RequestOptions = {}): Promise<void> {
    const path = `/v1/vms/${seg(vm, 'vm')}/services/${encodeURIComponent(name)}`;
    await this.#idempotent('DELETE', path, undefined, options);
  }

  // ------------------------------------------------------------------------------------------------
  // Commands
  // ------------------------------------------------------------------------------------------------

  /**
   * Runs a command in a VM and returns its output once it exits.
   *
   * A string runs through the shell as `["sh", "-c", command]`; an array is the exact argv.
   * The call is bound to the connection: if the client disconnects or `timeout` passes, the command
   * is killed. Detach long-running work inside the VM (`nohup … &`, `tmux`). Never retried after the
   * server answered, since a command is not idempotent.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param command - Shell command string, or argv array.
   * @param options - `timeoutSec` (server-side limit), `timeout` (client-side, ms), signal.
   * @returns Exit code, output, truncation flags and duration.
   */
  async run(
    vm: VMRef,
    command: string | readonly string[],
    options: RunOptions = {},
  ): Promise<CommandResult> {
    const argv = typeof command === 'string' ? ['sh', '-c', command] : [...command];
    if (argv.length === 0) throw new FastVMError('run: command must not be empty');
    const body: Record<string, unknown> = { command: argv };
    if (options.timeoutSec !== undefined) body['timeoutSec'] = options.timeoutSec;
    const res = await this.#call('POST', `/v1/vms/${seg(vm, 'vm')}/exec`, {
      body,
      signal: options.signal,
      deadline: this.#deadline(options.timeout),
      retryHttp: false,
    });
    return commandResultFromWire(res);
  }

  /**
   * Opens an interactive console: a login shell on a pseudo-terminal in the VM.
   *
   * Gets a single-use console token (`POST /v1/vms/{id}/console-token`), then connects to the
   * console WebSocket with it (over HTTP/1.1, on its own connection). The session ends when the
   * shell exits (`exited` then carries its exit status), when {@link ConsoleSession.close} is
   * called (the shell is hung up), or when the connection or the VM goes away.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Initial size (`cols` and `rows`), signal, timeout (token and handshake).
   * @returns The open session.
   * @throws {@link ConflictError} if the VM is not running; {@link NotFoundError} if there is no such VM.
   */
  async console(vm: VMRef, options: ConsoleOptions = {}): Promise<ConsoleSession> {
    const deadline = this.#deadline(options.timeout);
    const token = (await this.#call('POST', `/v1/vms/${seg(vm, 'vm')}/console-token`, {
      signal: options.signal,
      deadline,
      retryHttp: true,
    })) as { token?: unknown; websocketPath?: unknown } | undefined;
    if (typeof token?.token !== 'string' || typeof token.websocketPath !== 'string') {
      throw new FastVMError('console: the server returned no console token');
    }
    const url = consoleUrl(this.baseUrl, token.websocketPath, token.token, options);
    return openConsole(url, {
      headers: { 'user-agent': this.#headers['user-agent']! },
      tls: this.#tls,
      timeoutMs: remaining(deadline),
      signal: options.signal,
      cols: options.cols,
      rows: options.rows,
    });
  }

  /**
   * Runs a command and yields its output as it is produced (NDJSON streaming exec), then exactly
   * one `exit` event. There is no output cap. Breaking out of the loop, or aborting `signal`,
   * resets the request and the server kills the command.
   *
   * @example
   * ```ts
   * for await (const ev of client.stream(vm, 'for i in 1 2 3; do echo $i; sleep 1; done')) {
   *   if (ev.type === 'stdout') process.stdout.write(ev.data);
   *   else if (ev.type === 'exit') console.log('exit', ev.exitCode);
   * }
   * ```
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param command - Shell command string (run as `sh -c`), or argv array.
   * @param options - `timeoutSec` (server-side), `stdin`, signal.
   * @throws {@link APIError} when the server refuses the command (before any event).
   * @throws {@link ConnectionError} when the stream breaks before the exit event.
   */
  async *stream(
    vm: VMRef,
    command: string | readonly string[],
    options: StreamOptions = {},
  ): AsyncGenerator<ExecEvent, void, undefined> {
    const argv = typeof command === 'string' ? ['sh', '-c', command] : [...command];
    if (argv.length === 0) throw new FastVMError('stream: command must not be empty');
    const body: Record<string, unknown> = { command: argv };
    if (options.timeoutSec !== undefined) body['timeoutSec'] = options.timeoutSec;
    if (options.stdin !== undefined) body['stdin'] = Buffer.from(options.stdin).toString('base64');
    const res = await this.#transport.stream({
      method: 'POST',
      path: `/v1/vms/${seg(vm, 'vm')}/exec`,
      headers: {
        ...this.#headers,
        accept: 'application/x-ndjson',
        'content-type': 'application/json',
      },
      body: Buffer.from(JSON.stringify(body)),
      timeoutMs: this.#budget(options.timeout),
      signal: options.signal,
    });
    yield* execEvents(res);
  }

  /**
   * Starts a command as an exec session and returns at once: the server keeps its output (the
   * last 1 MiB, stdout and stderr together) and its exit status (10 minutes after the end), and
   * any number of clients can {@link FastVM.attach} to it, leave and attach again. Not retried.
   *
   * @example
   * ```ts
   * const { execId } = await client.execDetached(vm, 'make -j4 2>&1');
   * for await (const ev of client.attach(vm, execId)) {
   *   if (ev.type === 'stdout') process.stdout.write(ev.data);
   * }
   * ```
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param command - Shell command string (run as `sh -c`), or argv array.
   * @param options - `timeoutSec` (server-side), `stdin`, signal, timeout.
   * @throws {@link ConflictError} if the VM is not running; {@link QuotaExceededError} when 32
   *   sessions run in the VM already.
   */
  async execDetached(
    vm: VMRef,
    command: string | readonly string[],
    options: DetachedExecOptions = {},
  ): Promise<ExecSession> {
    const argv = typeof command === 'string' ? ['sh', '-c', command] : [...command];
    if (argv.length === 0) throw new FastVMError('execDetached: command must not be empty');
    const body: Record<string, unknown> = { command: argv, detach: true };
    if (options.timeoutSec !== undefined) body['timeoutSec'] = options.timeoutSec;
    if (options.stdin !== undefined) body['stdin'] = Buffer.from(options.stdin).toString('base64');
    return execSessionFromWire(
      await this.#call('POST', `/v1/vms/${seg(vm, 'vm')}/exec`, {
        body,
        signal: options.signal,
        deadline: this.#deadline(options.timeout),
        retryHttp: false,
      }),
    );
  }

  /**
   * Follows an exec session: its kept output from `fromOffset`, then live output, then exactly
   * one `exit` event. Output events carry their `offset`. Leaving the loop (or aborting `signal`)
   * only stops following; the command goes on.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param execId - The session's id ({@link ExecSession.execId}).
   * @param options - `fromOffset`, signal, timeout.
   * @throws {@link NotFoundError} for an unknown (or forgotten) session.
   * @throws {@link ConnectionError} when the stream breaks before the exit event, which is also
   *   how a killed or failed session ends (its {@link ExecSession.error} says why).
   */
  async *attach(
    vm: VMRef,
    execId: string,
    options: AttachOptions = {},
  ): AsyncGenerator<ExecEvent, void, undefined> {
    if (!execId) throw new FastVMError('attach: an exec id is required');
    const from = options.fromOffset ?? 0;
    if (!Number.isSafeInteger(from) || from < 0) {
      throw new FastVMError('attach: fromOffset must be a non-negative integer');
    }
    const res = await this.#transport.stream({
      method: 'GET',
      path: `/v1/vms/${seg(vm, 'vm')}/execs/${encodeURIComponent(execId)}/stream?fromOffset=${from}`,
      headers: { ...this.#headers, accept: 'application/x-ndjson' },
      timeoutMs: this.#budget(options.timeout),
      signal: options.signal,
    });
    let offset = Number(res.headers['x-exec-from-offset'] ?? from);
    for await (const ev of execEvents(res)) {
      if (ev.type === 'exit') {
        yield ev;
      } else {
        yield { ...ev, offset };
        offset += ev.data.length;
      }
    }
  }

  /**
   * The VM's exec sessions: running ones, and ended ones for 10 minutes after their end.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   */
  async listExecs(vm: VMRef, options: RequestOptions = {}): Promise<ExecSession[]> {
    return asArray(await this.#get(`/v1/vms/${seg(vm, 'vm')}/execs`, options)).map(
      execSessionFromWire,
    );
  }

  /**
   * One exec session.
   *
   * @throws {@link NotFoundError} for an unknown (or forgotten) session.
   */
  async getExec(vm: VMRef, execId: string, options: RequestOptions = {}): Promise<ExecSession> {
    const path = `/v1/vms/${seg(vm, 'vm')}/execs/${encodeURIComponent(execId)}`;
    return execSessionFromWire(await this.#get(path, options));
  }

  /**
   * Kills a running exec session (SIGKILL to its process group) and returns it as it ended.
   *
   * @throws {@link NotFoundError} for an unknown (or forgotten) session.
   */
  async killExec(vm: VMRef, execId: string, options: RequestOptions = {}): Promise<ExecSession> {
    const path = `/v1/vms/${seg(vm, 'vm')}/execs/${encodeURIComponent(execId)}`;
    return execSessionFromWire(await this.#idempotent('DELETE', path, undefined, options));
  }

  /**
   * Uploads a local file or directory into a VM, streaming (never holding the whole file in memory).
   *
   * A file goes to `remotePath` (or into it, when it is an existing directory or ends in `/`). A
   * directory's contents go into `remotePath` (created; existing files are merged). The bytes travel
   * as exec stdin in ~1 MiB chunks into a temp file that is renamed (or unpacked) only once complete,
   * so a failed upload leaves nothing at the destination. Works without VM networking.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param localPath - Local file or directory.
   * @param remotePath - Absolute path in the VM.
   * @param options - `onProgress`, signal.
   * @throws {@link FileTransferError} when the local path is missing or a command in the VM fails.
   */
  async upload(
    vm: VMRef,
    localPath: string,
    remotePath: string,
    options: TransferOptions = {},
  ): Promise<TransferResult> {
    const started = performance.now();
    const st = await fsp.stat(localPath).catch((err: NodeJS.ErrnoException) => {
      throw new FileTransferError(
        `upload: ${localPath}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`,
        {
          code: err.code ?? 'EIO',
        },
      );
    });
    if (!st.isFile() && !st.isDirectory()) {
      throw new FileTransferError(`upload: ${localPath} is not a regular file or a directory`);
    }
    const ops = this.#execOps(vm, options);
    const r = st.isDirectory()
      ? await uploadDirectory(ops, localPath, remotePath)
      : await uploadFile(ops, localPath, remotePath, st.size);
    return {
      kind: st.isDirectory() ? 'directory' : 'file',
      ...r,
      durationMs: Math.round(performance.now() - started),
    };
  }

  /**
   * Downloads a file or directory from a VM, streaming (NDJSON exec of `cat` or `tar`).
   *
   * A file goes to `localPath` (or into it, when it is an existing directory; parent directories
   * are created). A directory's contents go into `localPath` (created; existing files are kept
   * unless the VM has a file of the same name). Data lands in a temp file or directory next to the
   * destination, renamed into place only when complete. Works without VM networking.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param remotePath - Absolute path in the VM.
   * @param localPath - Local destination.
   * @param options - `onProgress`, signal.
   * @throws {@link FileTransferError} (`code: 'ENOENT'`) when the remote path does not exist.
   */
  async download(
    vm: VMRef,
    remotePath: string,
    localPath: string,
    options: TransferOptions = {},
  ): Promise<TransferResult> {
    const started = performance.now();
    if (!remotePath.startsWith('/') || remotePath.includes('\0')) {
      throw new FileTransferError(
        `download: the path in the VM must be absolute, got '${remotePath}'`,
      );
    }
    const ops = this.#execOps(vm, options);
    const kind = await remoteKind(ops, remotePath);
    if (kind === 'missing') {
      throw new FileTransferError(`download: ${remotePath}: no such file or directory in the VM`, {
        code: 'ENOENT',
      });
    }
    const r =
      kind === 'directory'
        ? await downloadDirectory(ops, remotePath, localPath)
        : await downloadFile(ops, remotePath, localPath);
    return { kind, ...r, durationMs: Math.round(performance.now() - started) };
  }

  /**
   * Pauses a running VM: its vCPUs stop (memory, processes and disk are kept) and its vCPU quota is
   * released. Pausing a paused VM returns it unchanged.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   * @returns The paused VM.
   */
  async pause(vm: VMRef, options: RequestOptions = {}): Promise<VM> {
    return vmFromWire(
      await this.#idempotent('POST', `/v1/vms/${seg(vm, 'vm')}/pause`, undefined, options),
    );
  }

  /**
   * Resumes a paused VM (re-acquiring its vCPU quota). Resuming a running VM returns it unchanged.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   * @returns The running VM.
   * @throws {@link QuotaExceededError} when the organisation's vCPU quota is used up.
   */
  async resume(vm: VMRef, options: RequestOptions = {}): Promise<VM> {
    return vmFromWire(
      await this.#idempotent('POST', `/v1/vms/${seg(vm, 'vm')}/resume`, undefined, options),
    );
  }

  /**
   * Restarts the VM's TTL countdown (while paused: the full TTL applies at the next resume).
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Signal and timeout.
   * @returns The updated VM.
   * @throws {@link ConflictError} when the VM has no TTL.
   */
  async refreshTtl(vm: VMRef, options: RequestOptions = {}): Promise<VM> {
    const path = `/v1/vms/${seg(vm, 'vm')}/ttl/refresh`;
    return vmFromWire(await this.#idempotent('POST', path, undefined, options));
  }

  /**
   * Sets (and restarts) or removes (`null`) the VM's TTL.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param ttl - The new TTL, or `null` to remove it.
   * @param options - Signal and timeout.
   * @returns The updated VM.
   */
  async setTtl(vm: VMRef, ttl: VMTtl | null, options: RequestOptions = {}): Promise<VM> {
    const body = { ttl: ttl === null ? null : { seconds: ttl.seconds, action: ttl.action } };
    return vmFromWire(await this.#idempotent('PATCH', `/v1/vms/${seg(vm, 'vm')}`, body, options));
  }

  // ------------------------------------------------------------------------------------------------
  // Snapshots
  // ------------------------------------------------------------------------------------------------

  /**
   * Snapshots a running VM and waits until the snapshot is `ready`.
   *
   * @param vm - VM id (or name), or a {@link VM}.
   * @param options - Name, wait timeout, signal.
   * @returns The ready snapshot.
   * @throws {@link SnapshotError} if the snapshot ends in `error`.
   * @throws {@link SnapshotNotReadyError} if it is not ready within `timeout`.
   */
  async snapshot(vm: VMRef, options: SnapshotOptions = {}): Promise<Snapshot> {
    const deadline = this.#deadline(options.timeout);
    const body: Record<string, unknown> = { vmId: idOf(vm, 'vm') };
    if (options.name !== undefined && options.name !== '') body['name'] = options.name;
    const created = snapshotFromWire(
      await this.#call('POST', '/v1/snapshots', {
        body,
        signal: options.signal,
        deadline,
        retryHttp: false,
      }),
    );
    return this.#waitFor(created, {
      ready: SNAPSHOT_READY,
      terminal: SNAPSHOT_TERMINAL,
      deadline,
      signal: options.signal,
      refresh: async (dl) =>
        snapshotFromWire(
          await this.#call('GET', `/v1/snapshots/${seg(created, 'snapshot')}`, {
            ...dl,
            retryHttp: true,
          }),
        ),
      failed: (s) => new SnapshotError(s.id, s.status),
      timedOut: (s) => new SnapshotNotReadyError(s.id, s.status, this.#budget(options.timeout)),
    });
  }

  /**
   * Restores `n` VMs from a snapshot in one call (`POST /v1/snapshots/{id}/fork`); resolves
   * when all of them are running. All or nothing: if the quota cannot hold all `n`, none is
   * started ({@link QuotaExceededError}, whose body says how many would fit); if one fails to
   * start, the server deletes the others and the call throws. Never retried after the server
   * answered.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param n - How many VMs, 1 to 100.
   * @param options - Name prefix (VMs are `<prefix>-1` … `<prefix>-<n>`), firewall, envVars,
   *   metadata, timeout.
   * @returns The VMs, running, in name order.
   */
  async fork(snapshot: SnapshotRef, n: number, options: ForkOptions = {}): Promise<VM[]> {
    if (!Number.isInteger(n) || n < 1) throw new FastVMError('fork: n must be a positive integer');
    const body: Record<string, unknown> = { count: n };
    if (options.namePrefix !== undefined && options.namePrefix !== '') {
      body['namePrefix'] = options.namePrefix;
    }
    if (options.firewall !== undefined) body['firewall'] = firewallToWire(options.firewall);
    if (options.envVars !== undefined) body['envVars'] = { ...options.envVars };
    if (options.metadata !== undefined) body['metadata'] = options.metadata;
    const res = await this.#call('POST', `/v1/snapshots/${seg(snapshot, 'snapshot')}/fork`, {
      body,
      signal: options.signal,
      deadline: this.#deadline(options.timeout),
      retryHttp: false,
    });
    return asArray(res).map(vmFromWire);
  }

  /**
   * A snapshot's lineage: the path from the VM it all started from down to the snapshot, and
   * the tree of VMs and snapshots made from it. Deleted objects that link the tree appear as
   * their id with `deleted: true`.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param options - Signal and timeout.
   */
  async lineage(snapshot: SnapshotRef, options: RequestOptions = {}): Promise<Lineage> {
    return lineageFromWire(
      await this.#get(`/v1/snapshots/${seg(snapshot, 'snapshot')}/lineage`, options),
    );
  }

  /**
   * Fetches one snapshot.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param options - Signal and timeout.
   * @throws {@link NotFoundError} if there is no such snapshot.
   */
  async getSnapshot(snapshot: SnapshotRef, options: RequestOptions = {}): Promise<Snapshot> {
    return snapshotFromWire(await this.#get(`/v1/snapshots/${seg(snapshot, 'snapshot')}`, options));
  }

  /**
   * Lists the organisation's snapshots.
   *
   * @param options - Signal and timeout.
   */
  async listSnapshots(options: RequestOptions = {}): Promise<Snapshot[]> {
    return asArray(await this.#get('/v1/snapshots', options)).map(snapshotFromWire);
  }

  /**
   * Deletes a snapshot. VMs restored from it are not affected.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param options - Signal and timeout.
   */
  async removeSnapshot(snapshot: SnapshotRef, options: RequestOptions = {}): Promise<void> {
    await this.#idempotent(
      'DELETE',
      `/v1/snapshots/${seg(snapshot, 'snapshot')}`,
      undefined,
      options,
    );
  }

  /**
   * Renames a snapshot.
   *
   * @param snapshot - Snapshot id (or name), or a {@link Snapshot}.
   * @param name - The new name.
   * @param options - Signal and timeout.
   * @returns The updated snapshot.
   */
  async renameSnapshot(
    snapshot: SnapshotRef,
    name: string,
    options: RequestOptions = {},
  ): Promise<Snapshot> {
    const path = `/v1/snapshots/${seg(snapshot, 'snapshot')}`;
    return snapshotFromWire(await this.#idempotent('PATCH', path, { name }, options));
  }

  // ------------------------------------------------------------------------------------------------
  // Builds and image imports (snapshot imports, contract §4.7)
  // ------------------------------------------------------------------------------------------------

  /**
   * Builds a snapshot from a Dockerfile: zips the context (a directory, or ZIP bytes), uploads
   * it, starts the build and follows it until it ends. Every step is cached on the server, so a
   * rebuild runs only what changed.
   *
   * @returns The produced (ready) snapshot.
   * @throws {@link BuildError} when the build fails or is cancelled.
   */
  async build(options: BuildOptions): Promise<Snapshot> {
    const started = await this.startBuild(options);
    return this.#follow(started.id, options);
  }

  /**
   * Imports an image (`fastvm/base`, `debian:bookworm`, or a registry image when the server can
   * pull them) as a snapshot and follows it until it ends.
   *
   * @returns The produced (ready) snapshot.
   * @throws {@link BuildError} when the import fails or is cancelled.
   */
  async importImage(ref: string, options: ImportImageOptions = {}): Promise<Snapshot> {
    const started = await this.startImageImport(ref, options);
    return this.#follow(started.id, options);
  }

  /** Uploads the context and starts a Dockerfile build; returns the pending import. */
  async startBuild(options: BuildOptions): Promise<SnapshotImport> {
    let dockerfilePath = options.dockerfilePath ?? 'Dockerfile';
    const extra =
      options.dockerfile !== undefined
        ? [
            {
              name: (dockerfilePath = '.fastvm.Dockerfile'),
              data: Buffer.from(options.dockerfile),
              mode: 0o100644,
            },
          ]
        : [];
    let zip: Buffer;
    if (options.context === undefined) {
      zip = zipEntries(extra);
    } else if (typeof options.context === 'string') {
      zip = await zipDirectory(options.context, extra);
    } else {
      if (extra.length > 0) {
        throw new FastVMError(
          'build: give the Dockerfile inside the ZIP (dockerfilePath) when the context is ZIP bytes',
        );
      }
      zip = Buffer.from(options.context);
    }
    const presign = (await this.#call('POST', '/v1/snapshot-imports/context-presign', {
      body: { sizeBytes: zip.length },
      signal: options.signal,
      deadline: this.#deadline(undefined),
      retryHttp: true,
    })) as { uploadUrl: string; contextRef: string };
    const put = await fetch(presign.uploadUrl, {
      method: 'PUT',
      body: new Uint8Array(zip),
      headers: { 'content-type': 'application/zip' },
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (!put.ok) {
      const text = await put.text();
      throw APIError.fromResponse(put.status, parseJson(text), {});
    }
    await put.arrayBuffer().catch(() => undefined);
    const source: Record<string, unknown> = {
      type: 'dockerfile',
      contextRef: presign.contextRef,
      dockerfilePath,
    };
    if (options.target !== undefined) source['target'] = options.target;
    if (options.buildArgs !== undefined) source['buildArgs'] = options.buildArgs;
    return this.#startImport(source, options);
  }

  /** Starts an image import; returns the pending import. */
  async startImageImport(ref: string, options: ImportImageOptions = {}): Promise<SnapshotImport> {
    const source: Record<string, unknown> = { type: 'image', image: ref };
    if (options.platform !== undefined) source['platform'] = options.platform;
    if (options.registryUsername !== undefined)
      source['registryUsername'] = options.registryUsername;
    if (options.registryPassword !== undefined)
      source['registryPassword'] = options.registryPassword;
    return this.#startImport(source, options);
  }

  async #startImport(
    source: Record<string, unknown>,
    options: {
      name?: string | undefined;
      machineType?: string | undefined;
      diskGiB?: number | undefined;
      signal?: AbortSignal | undefined;
    },
  ): Promise<SnapshotImport> {
    const body: Record<string, unknown> = { source };
    if (options.name !== undefined) body['name'] = options.name;
    if (options.machineType !== undefined) body['machineType'] = options.machineType;
    if (options.diskGiB !== undefined) body['diskGiB'] = options.diskGiB;
    return (await this.#call('POST', '/v1/snapshot-imports', {
      body,
      signal: options.signal,
      deadline: this.#deadline(undefined),
      retryHttp: false,
    })) as SnapshotImport;
  }

  /** A snapshot import by id. */
  async getImport(id: string, options: RequestOptions = {}): Promise<SnapshotImport> {
    return (await this.#get(
      `/v1/snapshot-imports/${encodeURIComponent(id)}`,
      options,
    )) as SnapshotImport;
  }

  /** The organisation's snapshot imports, newest first. */
  async listImports(options: RequestOptions = {}): Promise<SnapshotImport[]> {
    return asArray(await this.#get('/v1/snapshot-imports', options)) as SnapshotImport[];
  }

  /** Cancels a running import (idempotent); returns its state. */
  async cancelImport(id: string, options: RequestOptions = {}): Promise<SnapshotImport> {
    return (await this.#idempotent(
      'POST',
      `/v1/snapshot-imports/${encodeURIComponent(id)}/cancel`,
      undefined,
      options,
    )) as SnapshotImport;
  }

  /** Deletes a finished import and the snapshot it produced. */
  async removeImport(id: string, options: RequestOptions = {}): Promise<void> {
    await this.#idempotent(
      'DELETE',
      `/v1/snapshot-imports/${encodeURIComponent(id)}`,
      undefined,
      options,
    );
  }

  /**
   * Follows an import: yields its new events and build output as they come, then `done` with
   * the final state. Aborting `signal` stops following (it does not cancel the import).
   */
  async *watchImport(
    id: string,
    options: WatchOptions = {},
  ): AsyncGenerator<BuildStreamItem, void, undefined> {
    const every = options.pollInterval ?? 500;
    let seen = 0;
    let offset = 0;
    for (;;) {
      const state = await this.getImport(id, { signal: options.signal });
      const logs = (await this.#get(
        `/v1/snapshot-imports/${encodeURIComponent(id)}/logs?offset=${offset}`,
        {
          signal: options.signal,
        },
      )) as { data: string; nextOffset: number };
      if (logs.data !== '') yield { type: 'log', data: logs.data };
      offset = logs.nextOffset;
      for (const event of state.events.slice(seen)) yield { type: 'event', event };
      seen = state.events.length;
      if (['succeeded', 'failed', 'cancelled'].includes(state.status)) {
        // The rest of the output.
        for (;;) {
          const more = (await this.#get(
            `/v1/snapshot-imports/${encodeURIComponent(id)}/logs?offset=${offset}`,
            {
              signal: options.signal,
            },
          )) as { data: string; nextOffset: number };
          if (more.data === '') break;
          yield { type: 'log', data: more.data };
          offset = more.nextOffset;
        }
        yield { type: 'done', import: state };
        return;
      }
      await sleep(every, options.signal);
    }
  }

  async #follow(id: string, options: WatchOptions): Promise<Snapshot> {
    const onAbort = (): void => {
      void this.cancelImport(id).catch(() => undefined);
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const item of this.watchImport(id, { ...options, signal: undefined })) {
        if (item.type === 'event') options.onEvent?.(item.event);
        else if (item.type === 'log') options.onLog?.(item.data);
        else if (item.import.status === 'succeeded' && item.import.snapshotId) {
          return this.getSnapshot(item.import.snapshotId);
        } else {
          throw new BuildError(id, item.import.status, item.import.error ?? item.import.status);
        }
      }
      throw new BuildError(id, 'unknown', 'stopped following the build');
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Quotas
  // ------------------------------------------------------------------------------------------------

  /**
   * Fetches the organisation's quota limits and current usage.
   *
   * @param options - Signal and timeout.
   */
  async quotas(options: RequestOptions = {}): Promise<OrgQuotaUsage> {
    return quotasFromWire(await this.#get('/v1/org/quotas', options));
  }

  // ------------------------------------------------------------------------------------------------
  // Volumes
  // ------------------------------------------------------------------------------------------------

  /**
   * Creates a persistent volume: an ext4 disk that outlives VMs. Not retried (a repeat would
   * make a second volume).
   *
   * @param name - Volume name.
   * @param sizeGib - Size in GiB (≥ 1).
   * @param options - `accessMode` (`rw`, the default: one writable attachment at a time; `ro`:
   *   read-only attachments only), signal and timeout.
   * @throws {@link QuotaExceededError} past the org's `volumeCount` / `volumeGiB`.
   */
  async createVolume(
    name: string,
    sizeGib: number,
    options: RequestOptions & { accessMode?: 'rw' | 'ro' } = {},
  ): Promise<Volume> {
    const body = { name, sizeGiB: sizeGib, accessMode: options.accessMode ?? 'rw' };
    return volumeFromWire(
      await this.#call('POST', '/v1/volumes', {
        body,
        signal: options.signal,
        deadline: this.#deadline(options.timeout),
        retryHttp: false,
      }),
    );
  }

  /** Lists the organisation's volumes. */
  async listVolumes(options: RequestOptions = {}): Promise<Volume[]> {
    return asArray(await this.#get('/v1/volumes', options)).map(volumeFromWire);
  }

  /** Fetches a volume by id or name. */
  async getVolume(volume: VolumeRef, options: RequestOptions = {}): Promise<Volume> {
    return volumeFromWire(await this.#get(`/v1/volumes/${seg(volume, 'volume')}`, options));
  }

  /**
   * Renames a volume, changes its access mode, or resizes it: a grow works while it is attached
   * read-write to a running VM (the guest's filesystem grows online); a shrink only while it is
   * detached and its data fits.
   */
  async updateVolume(
    volume: VolumeRef,
    patch: { name?: string; sizeGib?: number; accessMode?: 'rw' | 'ro' },
    options: RequestOptions = {},
  ): Promise<Volume> {
    const body: Record<string, unknown> = {};
    if (patch.name !== undefined) body['name'] = patch.name;
    if (patch.sizeGib !== undefined) body['sizeGiB'] = patch.sizeGib;
    if (patch.accessMode !== undefined) body['accessMode'] = patch.accessMode;
    const path = `/v1/volumes/${seg(volume, 'volume')}`;
    return volumeFromWire(await this.#idempotent('PATCH', path, body, options));
  }

  /** Resizes a volume (see {@link FastVM.updateVolume}). */
  async resizeVolume(
    volume: VolumeRef,
    sizeGib: number,
    options: RequestOptions = {},
  ): Promise<Volume> {
    return this.updateVolume(volume, { sizeGib }, options);
  }

  /** Deletes a detached volume and its data. */
  async removeVolume(volume: VolumeRef, options: RequestOptions = {}): Promise<void> {
    await this.#idempotent('DELETE', `/v1/volumes/${seg(volume, 'volume')}`, undefined, options);
  }

  /** The volume's attachments (with `vmId`). */
  async volumeAttachments(
    volume: VolumeRef,
    options: RequestOptions = {},
  ): Promise<VolumeAttachment[]> {
    const path = `/v1/volumes/${seg(volume, 'volume')}/attachments`;
    return asArray(await this.#get(path, options)).map(attachmentFromWire);
  }

  /**
   * Attaches a volume to a VM and mounts it at `mountPath` (`/mnt/…` or `/data/…`) while it
   * runs; on a paused VM it stays `pending` until resume. Repeating it is harmless.
   *
   * @throws {@link ConflictError} when the volume is attached read-write elsewhere (or a
   *   read-write attach meets other attachments).
   */
  async attachVolume(
    vm: VMRef,
    volume: VolumeRef,
    mountPath: string,
    options: RequestOptions & { readOnly?: boolean } = {},
  ): Promise<VolumeAttachment> {
    const body = volumeMountToWire({
      volume,
      mountPath,
      ...(options.readOnly !== undefined ? { readOnly: options.readOnly } : {}),
    });
    const path = `/v1/vms/${seg(vm, 'vm')}/volumes`;
    return attachmentFromWire(await this.#idempotent('POST', path, body, options));
  }

  /**
   * Unmounts a volume in the guest and detaches it. A mount in use gives an
   * {@link InternalServerError} with status 502 and `guest_umount_busy` (it stays attached).
   */
  async detachVolume(vm: VMRef, volume: VolumeRef, options: RequestOptions = {}): Promise<void> {
    const path = `/v1/vms/${seg(vm, 'vm')}/volumes/${seg(volume, 'volume')}`;
    await this.#call('DELETE', path, {
      signal: options.signal,
      deadline: this.#deadline(options.timeout),
      retryHttp: false,
    });
  }

  // ------------------------------------------------------------------------------------------------
  // SSH keys and pricing
  // ------------------------------------------------------------------------------------------------

  /**
   * Lists the organisation's SSH public keys: the keys the SSH gateway accepts for its VMs
   * (`ssh -p 2222 <vm id or name>@<host>`).
   *
   * @param options - Signal and timeout.
   */
  async listSshKeys(options: RequestOptions = {}): Promise<SshKey[]> {
    return sshKeysFromWire(await this.#get('/v1/me/ssh-keys', options));
  }

  /**
   * Adds an SSH public key (one OpenSSH line, `<type> <base64> [comment]`; the comment is
   * dropped). Not retried: a repeat of a request that got through would be a conflict.
   *
   * @param publicKey - The public key line, e.g. the contents of `~/.ssh/id_ed25519.pub`.
   * @param options - `name` to label it; signal and timeout.
   * @returns The stored key with its fingerprint.
   * @throws {@link ConflictError} when the key is stored already (by any organisation).
   * @throws {@link QuotaExceededError} past 32 keys.
   */
  async addSshKey(
    publicKey: string,
    options: RequestOptions & { name?: string } = {},
  ): Promise<SshKey> {
    const body: Record<string, unknown> = { publicKey: publicKey.trim() };
    if (options.name !== undefined) body['name'] = options.name;
    return sshKeyFromWire(
      await this.#call('POST', '/v1/me/ssh-keys', {
        body,
        signal: options.signal,
        deadline: this.#deadline(options.timeout),
        retryHttp: false,
      }),
    );
  }

  /**
   * Removes an SSH key. Sessions it opened go on.
   *
   * @param fingerprint - `SHA256:…`, or an {@link SshKey}.
   * @param options - Signal and timeout.
   */
  async removeSshKey(
    fingerprint: string | Pick<SshKey, 'fingerprint'>,
    options: RequestOptions = {},
  ): Promise<void> {
    const fp = typeof fingerprint === 'string' ? fingerprint : fingerprint.fingerprint;
    if (!fp) throw new FastVMError('removeSshKey: a fingerprint is required');
    const path = `/v1/me/ssh-keys/${encodeURIComponent(fp)}`;
    await this.#idempotent('DELETE', path, undefined, options);
  }

  /**
   * The server's prices (`GET /v1/pricing`, which needs no API key).
   *
   * @param options - Signal and timeout.
   */
  async pricing(options: RequestOptions = {}): Promise<Pricing> {
    return pricingFromWire(await this.#get('/v1/pricing', options));
  }

  // ------------------------------------------------------------------------------------------------
  // Internals
  // ------------------------------------------------------------------------------------------------

  async #createVm(
    body: Record<string, unknown>,
    options: LaunchOptions | RestoreOptions,
  ): Promise<VM> {
    const deadline = this.#deadline(options.timeout);
    const created = vmFromWire(
      await this.#call('POST', '/v1/vms', {
        body,
        signal: options.signal,
        deadline,
        retryHttp: false,
      }),
    );
    return this.#waitFor(created, {
      ready: VM_READY,
      terminal: VM_TERMINAL,
      deadline,
      signal: options.signal,
      refresh: async (dl) =>
        vmFromWire(
          await this.#call('GET', `/v1/vms/${seg(created, 'vm')}`, { ...dl, retryHttp: true }),
        ),
      failed: (vm) => new VMLaunchError(vm.id, vm.status),
      timedOut: (vm) => new VMNotReadyError(vm.id, vm.status, this.#budget(options.timeout)),
    });
  }

  /** Polls `refresh` (100 ms backoff growing to 1 s) until the status is ready or terminal. */
  async #waitFor<T extends { status: string }>(
    initial: T,
    w: {
      ready: Set<string>;
      terminal: Set<string>;
      deadline: number;
      signal: AbortSignal | undefined;
      refresh: (o: { deadline: number; signal: AbortSignal | undefined }) => Promise<T>;
      failed: (last: T) => Error;
      timedOut: (last: T) => Error;
    },
  ): Promise<T> {
    let current = initial;
    let delay = POLL_INITIAL_MS;
    for (;;) {
      if (w.ready.has(current.status)) return current;
      if (w.terminal.has(current.status)) throw w.failed(current);
      const left = remaining(w.deadline);
      if (left <= 0) throw w.timedOut(current);
      await sleep(Math.min(delay, left), w.signal);
      delay = Math.min(delay * 1.5, POLL_MAX_MS);
      if (remaining(w.deadline) <= 0) throw w.timedOut(current);
      try {
        current = await w.refresh({ deadline: w.deadline, signal: w.signal });
      } catch (err) {
        if (err instanceof TimeoutError && remaining(w.deadline) <= 0) throw w.timedOut(current);
        throw err;
      }
    }
  }

  /** Exec primitives for the transfer helpers (`internal/files.ts`). */
  #execOps(vm: VMRef, options: TransferOptions): ExecOps {
    const path = `/v1/vms/${seg(vm, 'vm')}/exec`;
    return {
      run: async (argv, stdin) => {
        const body: Record<string, unknown> = { command: argv, timeoutSec: 600 };
        if (stdin !== undefined) body['stdin'] = stdin.toString('base64');
        return commandResultFromWire(
          await this.#call('POST', path, {
            body,
            signal: options.signal,
            deadline: this.#deadline(Math.max(this.timeout, 630_000)),
            retryHttp: false,
          }),
        );
      },
      stream: (argv) => this.stream(vm, argv, { signal: options.signal }),
      signal: options.signal,
      onProgress: options.onProgress,
    };
  }

  #get(path: string, options: RequestOptions): Promise<unknown> {
    return this.#call('GET', path, {
      signal: options.signal,
      deadline: this.#deadline(options.timeout),
      retryHttp: true,
    });
  }

  #idempotent(
    method: Method,
    path: string,
    body: unknown,
    options: RequestOptions,
  ): Promise<unknown> {
    return this.#call(method, path, {
      body,
      signal: options.signal,
      deadline: this.#deadline(options.timeout),
      retryHttp: true,
    });
  }

  #budget(timeout: number | undefined): number {
    return positive(timeout, 'timeout') ?? this.timeout;
  }

  #deadline(timeout: number | undefined): number {
    return performance.now() + this.#budget(timeout);
  }

  /**
   * One API call with retries. HTTP errors are retried only when `retryHttp` (idempotent methods);
   * connection failures are retried when the request never left the client, or for idempotent calls.
   */
  async #call(method: Method, path: string, o: CallOptions): Promise<unknown> {
    const headers: Record<string, string> = { ...this.#headers };
    let body: Buffer | undefined;
    if (o.body !== undefined) {
      body = Buffer.from(JSON.stringify(o.body));
      headers['content-type'] = 'application/json';
    }
    for (let retries = 0; ; retries++) {
      const left = remaining(o.deadline);
      if (left <= 0) throw new TimeoutError(`request timed out (${method} ${path})`);
      let res: WireResponse;
      try {
        res = await this.#transport.request({
          method,
          path,
          headers,
          body,
          timeoutMs: left,
          signal: o.signal,
        });
      } catch (err) {
        const retryable = err instanceof ConnectionError && (!err.requestSent || o.retryHttp);
        if (retryable && retries < this.maxRetries) {
          const wait = backoffMs(retries);
          if (wait < remaining(o.deadline)) {
            await sleep(wait, o.signal);
            continue;
          }
        }
        throw err;
      }
      const parsed = parseBody(res);
      if (res.status >= 200 && res.status < 300) return parsed;
      const error = APIError.fromResponse(res.status, parsed, res.headers);
      if (o.retryHttp && retries < this.maxRetries && shouldRetry(res, error)) {
        const wait = retryAfterMs(res.headers) ?? backoffMs(retries);
        if (wait < remaining(o.deadline)) {
          await sleep(wait, o.signal);
          continue;
        }
      }
      throw error;
    }
  }
}

function shouldRetry(res: WireResponse, error: APIError): boolean {
  const hint = res.headers['x-should-retry'];
  if (hint === 'true') return true;
  if (hint === 'false') return false;
  if (error.name === 'QuotaExceededError') return false;
  return res.status === 408 || res.status === 409 || res.status === 429 || res.status >= 500;
}

/**
 * The events of an NDJSON exec response (contract §4.2.10), through the exit event; an error
 * answer throws its APIError.
 */
async function* execEvents(res: StreamResponse): AsyncGenerator<ExecEvent, void, undefined> {
  if (res.status < 200 || res.status >= 300) {
    const chunks: Buffer[] = [];
    for await (const c of res.body) chunks.push(c);
    const parsed = parseBody({
      status: res.status,
      headers: res.headers,
      body: Buffer.concat(chunks),
    });
    throw APIError.fromResponse(res.status, parsed, res.headers);
  }
  let rest = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    rest += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, nl).trim();
      rest = rest.slice(nl + 1);
      if (line === '') continue;
      const ev = execEventFromWire(line);
      if (!ev) continue;
      yield ev;
      if (ev.type === 'exit') {
        res.cancel();
        return;
      }
    }
  }
  const last = rest.trim() === '' ? undefined : execEventFromWire(rest.trim());
  if (last) {
    yield last;
    if (last.type === 'exit') return;
  }
  throw new ConnectionError('the exec stream ended before the exit event');
}

/** One NDJSON exec event (contract §4.2.10); undefined for lines it does not understand. */
function execEventFromWire(line: string): ExecEvent | undefined {
  let ev: Record<string, unknown>;
  try {
    ev = JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new ConnectionError(
      `the exec stream sent a line that is not JSON: ${line.slice(0, 200)}`,
    );
  }
  const data = (): Buffer => Buffer.from(typeof ev['d'] === 'string' ? ev['d'] : '', 'base64');
  switch (ev['t']) {
    case 'o':
      return { type: 'stdout', data: data() };
    case 'e':
      return { type: 'stderr', data: data() };
    case 'x':
      return {
        type: 'exit',
        exitCode: typeof ev['c'] === 'number' ? ev['c'] : 0,
        timedOut: ev['to'] === true,
        durationMs: typeof ev['ms'] === 'number' ? ev['ms'] : 0,
      };
    default:
      return undefined;
  }
}

function parseBody(res: WireResponse): unknown {
  if (res.body.length === 0) return undefined;
  const text = res.body.toString('utf8');
  const type = res.headers['content-type'] ?? '';
  if (type.includes('json') || type === '') {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return text;
    }
  }
  return text;
}

function remaining(deadline: number): number {
  return deadline - performance.now();
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function positive(v: number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !(v > 0))
    throw new FastVMError(`${what} must be a positive number of milliseconds, got ${v}`);
  return v;
}

function lowerKeys(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}

type VolumeRef = string | Pick<Volume, 'id'>;

function volumeMountToWire(m: VolumeMount): Record<string, unknown> {
  return {
    volumeId: idOf(m.volume, 'volume'),
    mountPath: m.mountPath,
    ...(m.readOnly !== undefined ? { readOnly: m.readOnly } : {}),
  };
}

function idOf(ref: VMRef | SnapshotRef | VolumeRef, what: string): string {
  const id = typeof ref === 'string' ? ref : ref?.id;
  if (typeof id !== 'string' || id === '')
    throw new FastVMError(`${what}: expected an id, a name or an object with an id`);
  return id;
}

/** The id as one percent-encoded path segment. */
function seg(ref: VMRef | SnapshotRef | VolumeRef, what: string): string {
  const id = idOf(ref, what);
  if (id === '.' || id === '..') throw new FastVMError(`${what}: '${id}' is not a valid id`);
  return encodeURIComponent(id);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}
