/**
 * Server configuration from flags and environment, parsed once in `main.ts` and passed down
 * (nothing reads the environment at import time). Flags win over environment variables.
 * @module
 */
import os from 'node:os';
import path from 'node:path';
import type { HostCapacityConfig } from './services/host-capacity.js';

/** Resolved `serve` settings. */
export interface ServeConfig {
  host: string;
  port: number;
  dataDir: string;
  /** `postgres://…`; SQLite at `<dataDir>/fastvm.db` when absent. */
  databaseUrl?: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  /** Use the in-memory FakeRuntime instead of QEMU (demos, SDK tests). */
  fakeRuntime: boolean;
  bootstrapKey?: string;
  logLevel: string;
  sqliteSynchronous?: 'NORMAL' | 'FULL';
  /** Warm VMs kept ready per machine type for launches (`FASTVM_POOL`, default 1; 0 = off). */
  pool: number;
  /** Service proxy port (`FASTVM_PROXY_PORT`, default 8081; 0 = any free port). */
  proxyPort: number;
  /** Whether the port was set: only then is a busy port an error (else: any free port, warned). */
  proxyPortSet: boolean;
  /** Service hostnames are `<name>--<vm hex>.proxy.<domain>` (`FASTVM_PROXY_DOMAIN`, default localhost). */
  proxyDomain: string;
  /** SSH gateway port (`FASTVM_SSH_PORT`, default 2222; 0 = any free port); undefined = off. */
  sshPort: number | undefined;
  /** Whether the port was set: only then is a busy port an error (else: a warning, no gateway). */
  sshPortSet: boolean;
  /**
   * Host admission (`FASTVM_MEMORY_OVERCOMMIT`, `FASTVM_CPU_OVERCOMMIT`, `FASTVM_HOST_RESERVE_MIB`,
   * `FASTVM_HOST_MEMORY_MIB`, `FASTVM_HOST_CPUS`); unset values take the defaults of
   * `services/host-capacity.ts`.
   */
  hostCapacity: HostCapacityConfig;
  /** Bearer token that opens `/metrics` to non-loopback callers (`FASTVM_METRICS_TOKEN`). */
  metricsToken?: string;
  /** Several hosts: set when `FASTVM_CLUSTER_SECRET` is (effective with a PostgreSQL store). */
  cluster?: ClusterConfig;
}

/**
 * `FASTVM_CLUSTER_SECRET`, `FASTVM_HOST_ID`, `FASTVM_ADVERTISE_URL`, heartbeat settings,
 * `FASTVM_SNAPSHOT_REPLICAS`.
 */
export interface ClusterConfig {
  secret: string;
  hostId?: string;
  advertiseUrl?: string;
  heartbeatMs?: number;
  hostTimeoutMs?: number;
  /**
   * Other hosts each ready snapshot is copied to in the background
   * (`FASTVM_SNAPSHOT_REPLICAS`, 0–16, default 0 = only the host that took it holds it).
   */
  snapshotReplicas?: number;
}

/** Raw `serve` flags as parsed by `node:util` `parseArgs`. */
export interface ServeFlags {
  host?: string | undefined;
  port?: string | undefined;
  'data-dir'?: string | undefined;
  'database-url'?: string | undefined;
  'tls-cert'?: string | undefined;
  'tls-key'?: string | undefined;
  'fake-runtime'?: boolean | undefined;
  'log-level'?: string | undefined;
}

type Env = Record<string, string | undefined>;

/** `FASTVM_DATA_DIR`, else `$XDG_DATA_HOME/fastvm`, else `~/.local/share/fastvm`. */
export function defaultDataDir(env: Env = process.env): string {
  if (env.FASTVM_DATA_DIR) return path.resolve(env.FASTVM_DATA_DIR);
  const base = env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share');
  return path.join(base, 'fastvm');
}

const truthy = (v: string | undefined): boolean => v !== undefined && /^(1|true|yes|on)$/i.test(v);

/** Resolves `serve` settings; throws with a user-facing message on bad values. */
export function resolveServeConfig(flags: ServeFlags, env: Env = process.env): ServeConfig {
  const portText = flags.port ?? env.FASTVM_PORT ?? '8080';
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) throw new Error(`invalid port: ${portText}`);
  const tlsCertFile = flags['tls-cert'] ?? env.FASTVM_TLS_CERT;
  const tlsKeyFile = flags['tls-key'] ?? env.FASTVM_TLS_KEY;
  if (Boolean(tlsCertFile) !== Boolean(tlsKeyFile)) {
    throw new Error('--tls-cert and --tls-key must be given together');
  }
  const sync = env.FASTVM_SQLITE_SYNCHRONOUS?.toUpperCase();
  if (sync !== undefined && sync !== 'NORMAL' && sync !== 'FULL') {
    throw new Error('FASTVM_SQLITE_SYNCHRONOUS must be NORMAL or FULL');
  }
  const databaseUrl = flags['database-url'] ?? env.FASTVM_DATABASE_URL;
  const poolText = env.FASTVM_POOL ?? '1';
  if (!/^\d+$/.test(poolText) || Number(poolText) > 64) {
    throw new Error(`FASTVM_POOL must be a number from 0 to 64, got ${poolText}`);
  }
  const sshText = env.FASTVM_SSH_PORT ?? '2222';
  const sshOff = /^(off|false|no|none)$/i.test(sshText);
  if (!sshOff && (!/^\d+$/.test(sshText) || Number(sshText) > 65535)) {
    throw new Error(`FASTVM_SSH_PORT must be a port number or "off", got ${sshText}`);
  }
  const proxyText = env.FASTVM_PROXY_PORT ?? '8081';
  if (!/^\d+$/.test(proxyText) || Number(proxyText) > 65535) {
    throw new Error(`FASTVM_PROXY_PORT must be a port number, got ${proxyText}`);
  }
  const proxyDomain = (env.FASTVM_PROXY_DOMAIN ?? 'localhost').toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(proxyDomain)) {
    throw new Error(`FASTVM_PROXY_DOMAIN must be a DNS name, got ${proxyDomain}`);
  }
  const config: ServeConfig = {
    host: flags.host ?? env.FASTVM_HOST ?? '127.0.0.1',
    port,
    dataDir: flags['data-dir'] ? path.resolve(flags['data-dir']) : defaultDataDir(env),
    fakeRuntime: flags['fake-runtime'] === true || truthy(env.FASTVM_FAKE_RUNTIME),
    logLevel: flags['log-level'] ?? env.FASTVM_LOG_LEVEL ?? 'info',
    pool: Number(poolText),
    proxyPort: Number(proxyText),
    proxyPortSet: env.FASTVM_PROXY_PORT !== undefined,
    proxyDomain,
    sshPort: sshOff ? undefined : Number(sshText),
    sshPortSet: env.FASTVM_SSH_PORT !== undefined,
    hostCapacity: hostCapacityFromEnv(env),
  };
  if (databaseUrl) config.databaseUrl = databaseUrl;
  if (tlsCertFile && tlsKeyFile) {
    config.tlsCertFile = tlsCertFile;
    config.tlsKeyFile = tlsKeyFile;
  }
  if (env.FASTVM_METRICS_TOKEN) config.metricsToken = env.FASTVM_METRICS_TOKEN;
  const cluster = clusterFromEnv(env);
  if (cluster) config.cluster = cluster;
  if (env.FASTVM_BOOTSTRAP_KEY) config.bootstrapKey = env.FASTVM_BOOTSTRAP_KEY;
  if (sync) config.sqliteSynchronous = sync;
  return config;
}

/** Host admission settings from the environment; throws on values that are not positive numbers. */
export function hostCapacityFromEnv(env: Env = process.env): HostCapacityConfig {
  const out: HostCapacityConfig = {};
  const num = (name: string, integer: boolean, min: number): number | undefined => {
    const text = env[name];
    if (text === undefined || text === '') return undefined;
    const v = Number(text);
    if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
      throw new Error(
        `${name} must be ${integer ? 'an integer' : 'a number'} ≥ ${min}, got ${text}`,
      );
    }
    return v;
  };
  const mem = num('FASTVM_MEMORY_OVERCOMMIT', false, 0.1);
  const cpu = num('FASTVM_CPU_OVERCOMMIT', false, 0.1);
  const reserve = num('FASTVM_HOST_RESERVE_MIB', true, 0);
  const hostMem = num('FASTVM_HOST_MEMORY_MIB', true, 1);
  const hostCpus = num('FASTVM_HOST_CPUS', true, 1);
  if (mem !== undefined) out.memoryOvercommit = mem;
  if (cpu !== undefined) out.cpuOvercommit = cpu;
  if (reserve !== undefined) out.reserveMiB = reserve;
  if (hostMem !== undefined) out.hostMemoryMiB = hostMem;
  if (hostCpus !== undefined) out.hostCpus = hostCpus;
  return out;
}

/** Cluster settings from the environment (undefined without `FASTVM_CLUSTER_SECRET`). */
export function clusterFromEnv(env: Env = process.env): ClusterConfig | undefined {
  const secret = env.FASTVM_CLUSTER_SECRET;
  if (!secret) return undefined;
  if (secret.length < 16) throw new Error('FASTVM_CLUSTER_SECRET must be at least 16 characters');
  const out: ClusterConfig = { secret };
  const replicasText = env.FASTVM_SNAPSHOT_REPLICAS || '0';
  if (!/^\d{1,2}$/.test(replicasText) || Number(replicasText) > 16) {
    throw new Error(`FASTVM_SNAPSHOT_REPLICAS must be a number from 0 to 16, got ${replicasText}`);
  }
  out.snapshotReplicas = Number(replicasText);
  const hostId = env.FASTVM_HOST_ID;
  if (hostId) {
    if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(hostId)) {
      throw new Error(`FASTVM_HOST_ID must be lowercase letters, digits and -, got ${hostId}`);
    }
    out.hostId = hostId;
  }
  const url = env.FASTVM_ADVERTISE_URL;
  if (url) {
    if (!/^https?:\/\/[^/]+\/?$/.test(url)) {
      throw new Error(`FASTVM_ADVERTISE_URL must be http(s)://host:port, got ${url}`);
    }
    out.advertiseUrl = url.replace(/\/$/, '');
  }
  const ms = (name: string, min: number): number | undefined => {
    const text = env[name];
    if (text === undefined || text === '') return undefined;
    if (!/^\d+$/.test(text) || Number(text) < min) {
      throw new Error(`${name} must be a number of milliseconds ≥ ${min}, got ${text}`);
    }
    return Number(text);
  };
  const heartbeat = ms('FASTVM_HEARTBEAT_MS', 100);
  const timeout = ms('FASTVM_HOST_TIMEOUT_MS', 500);
  if (heartbeat !== undefined) out.heartbeatMs = heartbeat;
  if (timeout !== undefined) out.hostTimeoutMs = timeout;
  if ((timeout ?? 15_000) <= 2 * (heartbeat ?? 2000)) {
    throw new Error('FASTVM_HOST_TIMEOUT_MS must be more than twice FASTVM_HEARTBEAT_MS');
  }
  return out;
}
