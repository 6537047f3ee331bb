/**
 * The `fastvm-server` command line (process entry: `main.ts`):
 *
 *   serve [--host H] [--port P] [--data-dir D] [--tls-cert F --tls-key F] [--fake-runtime]
 *         [--database-url URL] [--log-level L]
 *   orgs create NAME | orgs list
 *   keys create --org ORG [--name N] | keys list [--org ORG] | keys revoke KEY_ID_OR_PREFIX
 *   quotas set --org ORG [--vcpu N] [--memory-mib N] [--disk-gib N] [--snapshot-count N]
 *              [--volume-count N] [--volume-gib N]      (N may be "default")
 *   quotas get --org ORG
 *   prune [--data-dir D] [--older-than DAYS] [--dry-run]
 *   openapi
 *   doctor [--data-dir D]
 *   hosts ls | hosts drain HOST_ID | hosts undrain HOST_ID      (several hosts; PostgreSQL)
 *
 * Admin commands work on the same database as a running server (SQLite WAL allows it).
 * Environment: FASTVM_HOST, FASTVM_PORT, FASTVM_DATA_DIR, FASTVM_DATABASE_URL,
 * FASTVM_BOOTSTRAP_KEY, FASTVM_FAKE_RUNTIME=1, FASTVM_LOG_LEVEL, FASTVM_TLS_CERT/KEY;
 * VM networking: FASTVM_NETWORK=off, FASTVM_IPV6_PREFIX, FASTVM_IPV4_SUBNET, FASTVM_BRIDGE,
 * FASTVM_HOST_TCP_PORTS (see services/host-network.ts). File transfer: FASTVM_STORAGE_PORT (port of the
 * storage listener VMs reach on their gateway; default any free port), FASTVM_STORAGE_URL (base of
 * presigned URLs when clients and VMs should use another address; see services/files.ts),
 * FASTVM_STAGING_BYTES_PER_ORG (most bytes of staged files one org may hold; default 32 GiB).
 * Builds: FASTVM_BUILD_CONTEXT_MAX_BYTES (largest uploaded build context, default 512 MiB),
 * FASTVM_BUILD_CONCURRENCY (builds running at once, default 2; see services/builds/).
 * Several hosts (PostgreSQL store): FASTVM_CLUSTER_SECRET (turns it on), FASTVM_HOST_ID,
 * FASTVM_ADVERTISE_URL, FASTVM_HEARTBEAT_MS, FASTVM_HOST_TIMEOUT_MS (see cluster/).
 * Guest cache: `serve` prunes unused guest builds and goldens at start (FASTVM_PRUNE=off: not;
 * FASTVM_PRUNE_AFTER_DAYS: grace for unreferenced entries, default 7), as `prune` does.
 * @module
 */
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Runtime } from '@fastvm/runtime';
import { pino, type Logger } from 'pino';
import { buildApp, type AppServices } from './app.js';
import { clusterFromEnv, defaultDataDir, resolveServeConfig, type ServeConfig } from './config.js';
import { DEFAULT_HOST_TIMEOUT_MS, listHosts, setHostState } from './cluster/host-registry.js';
import type { KyselyStore } from './store/kysely-store.js';
import { defaultDashboardDir } from './routes/dashboard.js';
import { DEFAULT_QUOTA_LIMITS, DomainError, type QuotaValues } from './domain/index.js';
import { createLogger } from './logging.js';
import { startServer } from './server.js';
import { createNetworkManager, networkSettingsFromEnv } from './services/host-network.js';
import { OrgService } from './services/orgs.js';
import { pricingFromEnv } from './pricing.js';
import { QuotaService, type OrgQuota } from './services/quota.js';
import { openStore, type QuotaOverrides } from './store/index.js';

const USAGE = `usage: fastvm-server <command>

  serve [--host H] [--port P] [--data-dir D] [--tls-cert F --tls-key F]
        [--fake-runtime] [--database-url URL] [--log-level L]
  orgs create NAME          create an org and print its first API key
  orgs list
  keys create --org ORG [--name N]
  keys list [--org ORG]
  keys revoke KEY_ID_OR_PREFIX
  quotas set --org ORG [--vcpu N] [--memory-mib N] [--disk-gib N] [--snapshot-count N]
             [--volume-count N] [--volume-gib N]     (N = a number or "default")
  quotas get --org ORG
  prune [--older-than DAYS] [--dry-run]
                            remove guest builds and goldens in the guest cache that no VM,
                            snapshot or process uses and that were not used for DAYS (default 7)
  openapi                   print the OpenAPI document (as served at /openapi.json)
  hosts ls                  the hosts of a cluster (PostgreSQL): state, heartbeat, usage
  hosts drain HOST_ID       no new VMs are placed on the host (its VMs keep running)
  hosts undrain HOST_ID
  doctor [--data-dir D]     check this host (QEMU, KVM, networking, cgroups, image, disk)
                            and print what to fix; exit status 1 if VMs cannot run

Admin commands accept --data-dir and --database-url like serve.`;

/** Where command output goes (tests capture it). */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

const processIo: CliIo = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
};

class UsageError extends Error {}

/**
 * Runs one command; resolves with the exit status (2 for usage errors). `serve` resolves only
 * after a SIGTERM/SIGINT-triggered graceful shutdown.
 */
export async function runCli(argv: string[], io: CliIo = processIo): Promise<number> {
  try {
    return await dispatch(argv, io);
  } catch (err) {
    if (
      err instanceof UsageError ||
      (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
    ) {
      io.err(`fastvm-server: ${(err as Error).message}\n\n${USAGE}`);
      return 2;
    }
    io.err(`fastvm-server: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

async function dispatch(argv: string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'openapi':
      io.out(JSON.stringify(await openApiDocument(), null, 2));
      return 0;
    case 'doctor':
      return doctor(rest, io);
    case 'orgs':
    case 'keys':
    case 'quotas':
      return admin(command, rest, io);
    case 'prune':
      return prune(rest, io);
    case 'hosts':
      return hosts(rest, io);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.out(USAGE);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command: ${command}`);
  }
}

/** Machine types whose golden `serve` builds at start. */
const PREWARM = ['c1m2'] as const;

// ---- serve ----------------------------------------------------------------------------------

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'data-dir': { type: 'string' },
      'database-url': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'fake-runtime': { type: 'boolean' },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  const config = resolveServeConfig(values);
  const logger = createLogger(config.logLevel);
  const runtime = await createRuntime(config, logger);
  if (!config.fakeRuntime && process.env.FASTVM_PRUNE !== 'off') {
    // In the background: never holds up the start.
    void pruneGuestCache(config.dataDir, pruneAfterDays(process.env.FASTVM_PRUNE_AFTER_DAYS), false)
      .then((res) => {
        if (res.removed.length) {
          logger.info(
            { removed: res.removed.map((e) => e.path), mib: Math.round(res.bytes / 2 ** 20) },
            'pruned unused guest builds and goldens',
          );
        }
      })
      .catch((err: unknown) => logger.warn({ err }, 'guest cache pruning failed'));
  }
  // VM networking (taps, public IPv6, firewall) only with real VMs.
  const net = config.fakeRuntime
    ? undefined
    : await createNetworkManager({
        dataDir: config.dataDir,
        logger,
        settings: networkSettingsFromEnv(),
      });
  const tls =
    config.tlsCertFile && config.tlsKeyFile
      ? { cert: await fs.readFile(config.tlsCertFile), key: await fs.readFile(config.tlsKeyFile) }
      : undefined;

  const server = await startServer({
    host: config.host,
    port: config.port,
    dataDir: config.dataDir,
    runtime,
    logger,
    ...(tls ? { tls } : {}),
    ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}),
    ...(config.bootstrapKey ? { bootstrapKey: config.bootstrapKey } : {}),
    ...(config.sqliteSynchronous ? { sqliteSynchronous: config.sqliteSynchronous } : {}),
    ...(net ? { network: net.network } : {}),
    storage: storageSettingsFromEnv(),
    builds: buildSettingsFromEnv(),
    pricing: pricingFromEnv(),
    hostCapacity: config.hostCapacity,
    ...(config.metricsToken ? { metricsToken: config.metricsToken } : {}),
    ...(config.cluster
      ? {
          cluster: {
            ...config.cluster,
            goldens: config.fakeRuntime ? [] : [...PREWARM],
            guestImage: config.fakeRuntime ? 'fake' : await guestImageId(),
          },
        }
      : {}),
    proxy: {
      port: config.proxyPort,
      domain: config.proxyDomain,
      optional: !config.proxyPortSet,
    },
    ...(config.sshPort !== undefined
      ? { ssh: { port: config.sshPort, optional: !config.sshPortSet } }
      : {}),
  });
  if (server.bootstrapKeyGenerated) {
    process.stdout.write(
      `\nFastVM bootstrap API key (shown once; saved to ${server.bootstrapKeyFile}):\n\n    ${server.bootstrapKey}\n\n`,
    );
  }
  process.stdout.write(
    `FastVM API listening on ${server.url}${config.fakeRuntime ? ' (fake runtime: no real VMs)' : ''}\n`,
  );
  if (server.ssh) {
    process.stdout.write(
      `SSH gateway on ${server.ssh.host}:${server.ssh.port} (host key ${server.ssh.hostKeyFingerprint})\n`,
    );
  }
  process.stdout.write(
    `Service proxy on ${server.proxy.scheme}://*.proxy.${server.proxy.domain}:${server.proxy.port}\n`,
  );
  process.stdout.write(
    existsSync(path.join(defaultDashboardDir(), 'index.html'))
      ? `Web console on ${server.url}/ (sign in with an API key)\n`
      : 'Web console not built: run `npm run build`\n',
  );
  if (net) process.stdout.write(`${net.summary}\n`);

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal }, 'shutting down');
      server.close().then(resolve, (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      });
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return 0;
}

/** `FASTVM_BUILD_CONTEXT_MAX_BYTES` / `FASTVM_BUILD_CONCURRENCY`; throws a user-facing message. */
function buildSettingsFromEnv(env: Record<string, string | undefined> = process.env): {
  contextMaxBytes?: number;
  concurrency?: number;
} {
  const out: { contextMaxBytes?: number; concurrency?: number } = {};
  const positive = (name: string): number | undefined => {
    const v = env[name]?.trim();
    if (!v) return undefined;
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) {
      throw new Error(`${name} must be a positive integer, got ${v}`);
    }
    return n;
  };
  const max = positive('FASTVM_BUILD_CONTEXT_MAX_BYTES');
  if (max !== undefined) out.contextMaxBytes = max;
  const conc = positive('FASTVM_BUILD_CONCURRENCY');
  if (conc !== undefined) out.concurrency = conc;
  return out;
}

/**
 * `FASTVM_STORAGE_PORT` / `FASTVM_STORAGE_URL` / `FASTVM_STAGING_BYTES_PER_ORG`; throws with a
 * user-facing message.
 */
function storageSettingsFromEnv(env: Record<string, string | undefined> = process.env): {
  port?: number;
  publicBaseUrl?: string;
  stagingBytesPerOrg?: number;
} {
  const out: { port?: number; publicBaseUrl?: string; stagingBytesPerOrg?: number } = {};
  const staging = env.FASTVM_STAGING_BYTES_PER_ORG?.trim();
  if (staging) {
    const n = Number(staging);
    if (!/^\d+$/.test(staging) || !Number.isSafeInteger(n) || n < 1) {
      throw new Error(
        `FASTVM_STAGING_BYTES_PER_ORG must be a positive number of bytes, got ${staging}`,
      );
    }
    out.stagingBytesPerOrg = n;
  }
  const port = env.FASTVM_STORAGE_PORT?.trim();
  if (port) {
    if (!/^\d+$/.test(port) || Number(port) > 65535) {
      throw new Error(`FASTVM_STORAGE_PORT: invalid port ${port}`);
    }
    out.port = Number(port);
  }
  const url = env.FASTVM_STORAGE_URL?.trim();
  if (url) {
    if (!/^https?:\/\/[^/]+\/?$/.test(url)) {
      throw new Error(`FASTVM_STORAGE_URL must be http(s)://host[:port], got ${url}`);
    }
    out.publicBaseUrl = url;
  }
  return out;
}

/** The guest image's id (`guest.json` of the guest cache; goldens are keyed by it), or ''. */
async function guestImageId(): Promise<string> {
  try {
    const mod = (await import('@fastvm/runtime')) as {
      loadGuestImage?: () => { imageId?: string };
    };
    return mod.loadGuestImage?.().imageId ?? '';
  } catch {
    return '';
  }
}

/** The real QEMU runtime, or the FakeRuntime with state kept next to the database. */
async function createRuntime(config: ServeConfig, logger: Logger): Promise<Runtime> {
  if (config.fakeRuntime) {
    const { FakeRuntime } = await import('./testing/index.js');
    await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    logger.warn('using the FakeRuntime: no real VMs are started');
    // Test knobs for crash tests: make launches/snapshots slow enough to kill the server mid-way.
    const ms = (name: string): number => Number(process.env[name] ?? 0) || 0;
    return new FakeRuntime({
      stateFile: path.join(config.dataDir, 'fake-runtime.json'),
      launchDelayMs: ms('FASTVM_FAKE_LAUNCH_DELAY_MS'),
      snapshotDelayMs: ms('FASTVM_FAKE_SNAPSHOT_DELAY_MS'),
    });
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import('@fastvm/runtime')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(
      `cannot load @fastvm/runtime (${(err as Error).message}); use --fake-runtime for a demo`,
      { cause: err },
    );
  }
  const create = mod.createQemuRuntime;
  if (typeof create !== 'function') {
    throw new Error('@fastvm/runtime does not export createQemuRuntime; use --fake-runtime');
  }
  const factory = create as (opts: {
    dataDir: string;
    logger: Logger;
    log: (msg: string) => void;
    prewarm: string[];
    pool: number;
  }) => Promise<Runtime>;
  const runtimeLogger = logger.child({ component: 'runtime' });
  return factory({
    dataDir: path.join(config.dataDir, 'runtime'),
    logger: runtimeLogger,
    log: (msg) => runtimeLogger.info(msg),
    // The CLI's default machine: build its golden snapshot at start so first launches are fast.
    prewarm: [...PREWARM],
    pool: config.pool,
  });
}

// ---- hosts ----------------------------------------------------------------------------------

/** `hosts ls|drain|undrain`: the cluster's host registry in the PostgreSQL store. */
async function hosts(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'database-url': { type: 'string' },
      'data-dir': { type: 'string' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const [verb, hostId] = positionals;
  const databaseUrl = values['database-url'] ?? process.env.FASTVM_DATABASE_URL;
  if (!databaseUrl || !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new UsageError("hosts needs the cluster's PostgreSQL: --database-url postgres://…");
  }
  const dataDir = values['data-dir'] ? path.resolve(values['data-dir']) : defaultDataDir();
  const store = (await openStore({ dataDir, databaseUrl })) as KyselyStore;
  try {
    switch (verb) {
      case 'ls':
      case 'list': {
        const timeoutSec = (clusterFromEnv()?.hostTimeoutMs ?? DEFAULT_HOST_TIMEOUT_MS) / 1000;
        const list = await listHosts(store, timeoutSec);
        if (values.json) {
          io.out(JSON.stringify(list, null, 2));
          return 0;
        }
        io.out('ID\tSTATE\tHEARTBEAT\tMEMORY MiB\tVCPUS\tURL\tREASON');
        for (const h of list) {
          const state = h.state !== 'lost' && !h.live ? `${h.state} (silent)` : h.state;
          io.out(
            [
              h.id,
              state,
              h.heartbeatAt,
              `${h.memoryUsedMiB}/${h.memoryLimitMiB}`,
              `${h.vcpuUsed}/${h.vcpuLimit}`,
              h.advertiseUrl,
              h.stateReason ?? '',
            ].join('\t'),
          );
        }
        return 0;
      }
      case 'drain':
      case 'undrain': {
        if (!hostId) throw new UsageError(`hosts ${verb} HOST_ID`);
        const state = verb === 'drain' ? 'draining' : 'active';
        const reason = verb === 'drain' ? `drained at ${new Date().toISOString()}` : null;
        if (!(await setHostState(store, hostId, state, reason))) {
          io.err(`fastvm-server: no host ${hostId}`);
          return 1;
        }
        io.out(`host ${hostId} ${state}`);
        return 0;
      }
      default:
        throw new UsageError('hosts ls | hosts drain HOST_ID | hosts undrain HOST_ID');
    }
  } finally {
    await store.close();
  }
}

// ---- prune ----------------------------------------------------------------------------------

/** `prune`: see `pruneCache` in the runtime (packages/runtime/src/prune.ts). */
async function prune(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'data-dir': { type: 'string' },
      'older-than': { type: 'string' },
      'dry-run': { type: 'boolean' },
    },
    strict: true,
  });
  const dataDir = values['data-dir'] ? path.resolve(values['data-dir']) : defaultDataDir();
  const dry = values['dry-run'] === true;
  const res = await pruneGuestCache(dataDir, pruneAfterDays(values['older-than']), dry);
  for (const e of res.removed) {
    io.out(`${dry ? 'would remove' : 'removed'} ${e.path} (${(e.bytes / 2 ** 20).toFixed(0)} MiB)`);
  }
  io.out(
    `${res.removed.length} unused entries, ${(res.bytes / 2 ** 20).toFixed(0)} MiB ${dry ? 'would be freed' : 'freed'}; ${res.kept.length} kept`,
  );
  return 0;
}

function pruneAfterDays(value: string | undefined): number {
  if (value === undefined || value === '') return 7;
  const days = Number(value);
  if (!Number.isFinite(days) || days < 0) {
    throw new UsageError(
      `--older-than / FASTVM_PRUNE_AFTER_DAYS: expected days >= 0, got ${value}`,
    );
  }
  return days;
}

/** Prunes the guest cache with the server's runtime data dir (`<dataDir>/runtime`) as references. */
async function pruneGuestCache(
  dataDir: string,
  days: number,
  dryRun: boolean,
): Promise<import('@fastvm/runtime').PruneResult> {
  const rt = await import('@fastvm/runtime');
  return rt.pruneCache({
    cacheDir: rt.defaultCacheDir(),
    dataDirs: [path.join(dataDir, 'runtime')],
    olderThanMs: days * 24 * 3600 * 1000,
    dryRun,
  });
}

/** `doctor`: the host checks of `doctor.ts`, printed; 1 when something required is missing. */
async function doctor(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { 'data-dir': { type: 'string' } },
    strict: true,
  });
  const { runDoctor, formatChecks } = await import('./doctor.js');
  const { defaultCacheDir } = await import('@fastvm/runtime');
  const checks = await runDoctor({
    dataDir: values['data-dir'] ? path.resolve(values['data-dir']) : defaultDataDir(),
    cacheDir: defaultCacheDir(),
  });
  for (const line of formatChecks(checks)) io.out(line);
  return checks.some((c) => c.status === 'fail') ? 1 : 0;
}

/** Builds the app with inert services just to read its route schemas. */
async function openApiDocument(): Promise<unknown> {
  const inert = {} as AppServices;
  const { app } = await buildApp({ services: inert, logger: pino({ level: 'silent' }) });
  try {
    const res = await app.inject({ method: 'GET', url: '/openapi.json' });
    return res.json();
  } finally {
    await app.close();
  }
}

// ---- admin ----------------------------------------------------------------------------------

/**
 * `orgs`, `keys` and `quotas`: the same services the API uses (`OrgService`, `QuotaService`),
 * over the configured store. Domain errors (no such org, a name taken…) are usage errors.
 */
async function admin(group: string, args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      org: { type: 'string' },
      name: { type: 'string' },
      'data-dir': { type: 'string' },
      'database-url': { type: 'string' },
      vcpu: { type: 'string' },
      'memory-mib': { type: 'string' },
      'disk-gib': { type: 'string' },
      'snapshot-count': { type: 'string' },
      'volume-count': { type: 'string' },
      'volume-gib': { type: 'string' },
    },
    strict: true,
  });
  const [verb, ...operands] = positionals;
  const dataDir = values['data-dir'] ? path.resolve(values['data-dir']) : defaultDataDir();
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const databaseUrl = values['database-url'] ?? process.env.FASTVM_DATABASE_URL;
  const store = await openStore({ dataDir, ...(databaseUrl ? { databaseUrl } : {}) });
  const orgs = new OrgService(store);
  // The server's defaults (`serve` sets no others), so limits print as the API reports them.
  const quotas = new QuotaService(store, DEFAULT_QUOTA_LIMITS);
  try {
    const orgRef = (): string => {
      if (!values.org) throw new UsageError('--org is required');
      return values.org;
    };
    switch (`${group} ${verb ?? ''}`) {
      case 'orgs create': {
        const name = operands[0] ?? values.name;
        if (!name) throw new UsageError('orgs create NAME');
        const { org, key } = await orgs.create(name);
        io.out(`org ${org.name} ${org.id}`);
        io.out(`api key (shown once): ${key}`);
        return 0;
      }
      case 'orgs list':
        for (const o of await orgs.list()) io.out(`${o.id}  ${o.name}  ${o.createdAt}`);
        return 0;
      case 'keys create': {
        const { org, key, record } = await orgs.createKey(orgRef(), values.name ?? 'default');
        io.out(`key ${record.id} (${record.prefix}…) for org ${org.name}`);
        io.out(`api key (shown once): ${key}`);
        return 0;
      }
      case 'keys list': {
        for (const k of await orgs.listKeys(values.org)) {
          const state = k.revokedAt ? `revoked ${k.revokedAt}` : 'active';
          io.out(`${k.id}  ${k.prefix}…  org=${k.orgId}  ${k.name}  ${state}`);
        }
        return 0;
      }
      case 'keys revoke': {
        const target = operands[0];
        if (!target) throw new UsageError('keys revoke KEY_ID_OR_PREFIX');
        const n = await orgs.revokeKey(target);
        io.out(`revoked ${n} key${n === 1 ? '' : 's'}`);
        return 0;
      }
      case 'quotas set': {
        const org = await orgs.find(orgRef());
        const overrides = parseQuotaFlags(values);
        if (Object.keys(overrides).length === 0) throw new UsageError('give at least one limit');
        printQuota(await quotas.setLimits(org.id, overrides), io);
        return 0;
      }
      case 'quotas get':
        printQuota(await quotas.get((await orgs.find(orgRef())).id), io);
        return 0;
      default:
        throw new UsageError(`unknown command: ${group} ${verb ?? ''}`.trim());
    }
  } catch (err) {
    if (err instanceof DomainError) throw new UsageError(err.message, { cause: err });
    throw err;
  } finally {
    await store.close();
  }
}

const QUOTA_FLAGS: ReadonlyArray<readonly [string, keyof QuotaValues]> = [
  ['vcpu', 'vcpu'],
  ['memory-mib', 'memoryMiB'],
  ['disk-gib', 'diskGiB'],
  ['snapshot-count', 'snapshotCount'],
  ['volume-count', 'volumeCount'],
  ['volume-gib', 'volumeGiB'],
];

function parseQuotaFlags(values: Record<string, unknown>): QuotaOverrides {
  const out: QuotaOverrides = {};
  for (const [flag, key] of QUOTA_FLAGS) {
    const v = values[flag];
    if (typeof v !== 'string') continue;
    if (v === 'default') out[key] = null;
    else if (/^\d+$/.test(v)) out[key] = Number(v);
    else throw new UsageError(`--${flag} must be a non-negative integer or "default"`);
  }
  return out;
}

/** One line per dimension: usage / limit, and whether the limit is the server default. */
function printQuota(quota: OrgQuota, io: CliIo): void {
  for (const [flag, key] of QUOTA_FLAGS) {
    const own = quota.overrides[key];
    const isDefault = own === undefined || own === null;
    io.out(
      `${flag.padEnd(15)} ${String(quota.usage[key]).padStart(7)} / ${quota.limits[key]}${isDefault ? ' (default)' : ''}`,
    );
  }
}
