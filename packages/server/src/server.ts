/**
 * `startServer`: opens the store, bootstraps the first API key, reconciles records with the
 * runtime (re-adopting surviving VMs), builds the app and listens. `close()` shuts down
 * gracefully; VMs keep running (`runtime.detach()`) and are adopted again at the next start.
 * @module
 */
import fs from 'node:fs/promises';
import type { Runtime } from '@fastvm/runtime';
import type { Logger } from 'pino';
import { createLogger } from './logging.js';
import { buildApp, type App } from './app.js';
import { DEFAULT_QUOTA_LIMITS, type Pricing, type QuotaValues } from './domain/index.js';
import { listen, type Listener } from './http/listener.js';
import type { ServiceContext, ServiceSettings } from './services/context.js';
import { ConsoleService } from './services/console.js';
import { ExecSessions } from './services/exec-sessions.js';
import { NoopNetworkManager, type NetworkManager } from './services/network.js';
import { recover, type RecoveryReport } from './services/recovery.js';
import { defaultDashboardDir } from './routes/dashboard.js';
import { startStorageListener, type StorageListener } from './routes/storage.js';
import { FileService } from './services/files.js';
import { ForkService } from './services/fork.js';
import { LineageService } from './services/lineage.js';
import { LifecycleService } from './services/lifecycle.js';
import { ensureBootstrapKey } from './services/orgs.js';
import { QuotaService } from './services/quota.js';
import { Metrics } from './services/metrics.js';
import { HostCapacity, type HostCapacityConfig } from './services/host-capacity.js';
import { SshKeyService } from './services/ssh-keys.js';
import { SnapshotService } from './services/snapshot-service.js';
import { PublishedServices } from './services/published-services.js';
import type { ProxyAddress } from './proxy/hostnames.js';
import { startServiceProxy, type ServiceProxy } from './proxy/proxy-server.js';
import { startSshGateway, type SshGateway } from './ssh/gateway.js';
import { TaskTracker } from './services/tasks.js';
import { TtlScheduler } from './services/ttl.js';
import { VmEvents } from './services/vm-events.js';
import { VolumeService } from './services/volume-service.js';
import { VmService } from './services/vm-service.js';
import { openStore, type Store } from './store/index.js';
import type { ClusterPeers } from './cluster/seams.js';
import { ClusterSnapshotMobility } from './cluster/snapshot-mobility.js';

/** Options of `startServer`. */
export interface StartServerOptions {
  /** Interface to bind (default 127.0.0.1). */
  host?: string;
  /** Port (default 8080; 0 = ephemeral). */
  port?: number;
  /** Where the database, bootstrap key and runtime state live. Created if missing. */
  dataDir: string;
  /** The VM runtime (`QemuRuntime`, or `FakeRuntime` in tests). */
  runtime: Runtime;
  /** Key for the default org on first start (otherwise one is generated). */
  bootstrapKey?: string;
  logger?: Logger;
  /** Used when no `logger` is given (default `FASTVM_LOG_LEVEL` or `warn`). */
  logLevel?: string;
  /** Serve TLS (HTTP/2 + HTTP/1.1 by ALPN) instead of cleartext (HTTP/1.1 + h2c). */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** `postgres://…` to use PostgreSQL instead of `<dataDir>/fastvm.db`. */
  databaseUrl?: string;
  sqliteSynchronous?: 'NORMAL' | 'FULL';
  /** Networking hooks (default: none; VMs get no public address). */
  network?: NetworkManager;
  /** How long a launch request waits before answering 202 (default 5000 ms). */
  launchWaitMs?: number;
  /**
   * Host admission (`services/host-capacity.ts`): launches, restores, forks and resumes are
   * refused with 503 `host_capacity` past the host's memory and vCPU limits. Absent: off
   * (`serve` always turns it on).
   */
  hostCapacity?: HostCapacityConfig;
  /** Opens `/metrics` to non-loopback callers sending it as a Bearer token. */
  metricsToken?: string;
  /** Server-wide default quota limits (per-org overrides still apply). */
  quotaDefaults?: Partial<QuotaValues>;
  maxDiskGiB?: number;
  defaultExecTimeoutSec?: number;
  /** Lifetime of console tokens, in seconds (default 60). */
  consoleTokenTtlSec?: number;
  /**
   * File transfer (`files/presign`, `/storage/…`). `port`: the guest-facing storage listener on
   * the VM bridge's gateway addresses, started when VMs have networking (default 0 = any free
   * port; it is added to the ports VMs may reach). `publicBaseUrl`: base of presigned URLs
   * (default: that listener, else the origin the client called). `urlTtlSec`: URL lifetime.
   * `stagingBytesPerOrg`: most bytes one org may have staged at a time (default 32 GiB).
   */
  storage?: {
    port?: number;
    publicBaseUrl?: string;
    urlTtlSec?: number;
    objectTtlMs?: number;
    stagingBytesPerOrg?: number;
  };
  /** What `GET /v1/pricing` answers (default: `DEFAULT_PRICING`, all zero). */
  pricing?: Pricing;
  /**
   * The published-service proxy, bound to `host` like the API (with its certificate when
   * `tls` is set). `port`: default 0 = any free port (`serve` uses 8081); `domain`: hostnames
   * are `<name>--<vm hex>.proxy.<domain>` (default `localhost`); backend time limits (default
   * 10 s to connect, 120 s until the response headers; 504 past them).
   */
  proxy?: {
    port?: number;
    /** A port that cannot be bound (another server has it) falls back to any free port. */
    optional?: boolean;
    domain?: string;
    connectTimeoutMs?: number;
    responseTimeoutMs?: number;
  };
  /** How long `close()` lets in-flight requests and launches finish (default 30 s). */
  shutdownGraceMs?: number;
  /**
   * The SSH gateway (`ssh -p <port> <vm>@<host>`): started only when given. `port` 0 = any free
   * port; `host` defaults to the API's. Its host key lives in `dataDir`. `optional`: a port that
   * cannot be bound (another server or sshd has it) is a warning and no gateway, not an error.
   */
  ssh?: { port: number; host?: string; optional?: boolean };
  /**
   * The built web console served at `/` (default: `packages/dashboard/dist` of this repository,
   * built by `npm run build`); false: not served.
   */
  dashboardDir?: string | false;
  /**
   * Multi-host. Cluster mode is on when the store is PostgreSQL (`databaseUrl`) and `secret`
   * (`FASTVM_CLUSTER_SECRET`) is set; otherwise this is ignored. `peers`: the other hosts (the
   * host registry, or `StaticPeers`). `snapshotReplicas` (`FASTVM_SNAPSHOT_REPLICAS`, default
   * 0): other hosts each ready snapshot is copied to.
   */
  cluster?: { secret: string; peers: ClusterPeers; snapshotReplicas?: number };
}

/** A running server. */
export interface ServerHandle {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  url: string;
  port: number;
  /** The default org's bootstrap key when known ('' when neither created, given nor saved). */
  bootstrapKey: string;
  /** True when this start generated the bootstrap key (print it once). */
  bootstrapKeyGenerated: boolean;
  /** Path of the file holding a generated bootstrap key. */
  bootstrapKeyFile: string;
  /** The SSH gateway, when started (`ssh` option). */
  ssh?: { host: string; port: number; hostKeyFingerprint: string; hostPublicKey: string };
  app: App;
  store: Store;
  recovery: RecoveryReport;
  /** Where the service proxy listens (scheme, domain, port). */
  proxy: ProxyAddress;
  /** Snapshot mobility, in cluster mode. */
  mobility?: ClusterSnapshotMobility;
  /** Graceful: stop accepting, drain, detach from the runtime (VMs survive), close the DB. */
  close(): Promise<void>;
  /**
   * Simulated crash for tests: drops connections and the DB handle without draining or
   * detaching, leaving durable state exactly as a kill -9 would.
   */
  kill(): Promise<void>;
}

/** Starts a FastVM API server. */
export async function startServer(opts: StartServerOptions): Promise<ServerHandle> {
  const logger =
    opts.logger ?? createLogger(opts.logLevel ?? process.env.FASTVM_LOG_LEVEL ?? 'warn');
  await fs.mkdir(opts.dataDir, { recursive: true, mode: 0o700 });

  const store = await openStore({
    dataDir: opts.dataDir,
    ...(opts.databaseUrl ? { databaseUrl: opts.databaseUrl } : {}),
    ...(opts.sqliteSynchronous ? { sqliteSynchronous: opts.sqliteSynchronous } : {}),
  });
  const runtime = opts.runtime;
  const network: NetworkManager = opts.network ?? new NoopNetworkManager();
  let unsubscribe: (() => void) | undefined;
  let ttl: TtlScheduler | undefined;
  let files: FileService | undefined;
  let storageListener: StorageListener | undefined;
  let sshGateway: SshGateway | undefined;
  let proxy: ServiceProxy | undefined;
  let mobility: ClusterSnapshotMobility | undefined;
  try {
    const boot = await ensureBootstrapKey(store, opts.dataDir, opts.bootstrapKey);
    if (boot.generated) logger.info({ file: boot.keyFile }, 'generated bootstrap API key');

    const settings: ServiceSettings = {
      launchWaitMs: opts.launchWaitMs ?? 5000,
      maxDiskGiB: opts.maxDiskGiB ?? 1024,
      defaultExecTimeoutSec: opts.defaultExecTimeoutSec ?? 600,
      execCapBytes: 4 * 1024 * 1024,
    };
    // Built in dependency order, each from what is already built; nothing is patched in later.
    // The TTL scheduler acts through the lifecycle service and hears of VM changes through
    // `events`, which the services publish to without knowing who listens.
    const tasks = new TaskTracker();
    const quotas = new QuotaService(
      store,
      { ...DEFAULT_QUOTA_LIMITS, ...opts.quotaDefaults },
      opts.hostCapacity ? new HostCapacity(store, opts.hostCapacity) : undefined,
    );
    const events = new VmEvents(logger);
    files = await FileService.create(
      { store, runtime, settings },
      {
        dataDir: opts.dataDir,
        ...(opts.storage?.publicBaseUrl ? { publicBaseUrl: opts.storage.publicBaseUrl } : {}),
        ...(opts.storage?.urlTtlSec ? { urlTtlSec: opts.storage.urlTtlSec } : {}),
        ...(opts.storage?.objectTtlMs ? { objectTtlMs: opts.storage.objectTtlMs } : {}),
        ...(opts.storage?.stagingBytesPerOrg
          ? { stagingBytesPerOrg: opts.storage.stagingBytesPerOrg }
          : {}),
      },
    );
    const metrics = new Metrics({ store, quotas, runtime });
    const volumes = new VolumeService({
      store,
      runtime,
      quotas,
      events,
      logger,
      dataDir: opts.dataDir,
    });
    // Cluster mode: PostgreSQL as the shared state, and the cluster's secret for the internal
    // channel (SQLite is one host: nothing of this runs).
    const clusterOn = opts.cluster !== undefined && !!opts.databaseUrl && !!opts.cluster.secret;
    mobility = clusterOn
      ? new ClusterSnapshotMobility({
          store,
          runtime,
          peers: opts.cluster!.peers,
          secret: opts.cluster!.secret,
          replicas: opts.cluster!.snapshotReplicas ?? 0,
          logger,
        })
      : undefined;
    const ctx: ServiceContext = {
      store,
      runtime,
      network,
      logger,
      tasks,
      settings,
      quotas,
      events,
      staging: files,
      metrics,
      volumes,
      ...(mobility ? { mobility } : {}),
    };
    const vms = new VmService(ctx);
    const execs = new ExecSessions(vms, { events, logger });
    const snapshots = new SnapshotService(ctx);
    const forks = new ForkService(ctx, vms);
    const consoles = new ConsoleService(
      { store, runtime, logger },
      opts.consoleTokenTtlSec ? { tokenTtlSec: opts.consoleTokenTtlSec } : {},
    );
    const lifecycle = new LifecycleService(ctx, vms);
    ttl = new TtlScheduler({
      events,
      onExpire: (orgId, vmId) => lifecycle.expire(orgId, vmId),
      logger,
    });

    // Subscribe before adopting so exits during adoption are not missed.
    unsubscribe = runtime.onExit((vmId, reason) => {
      vms.onRuntimeExit(vmId, reason).catch((err: unknown) => {
        logger.error({ err, vmId }, 'recording VM exit failed');
      });
    });
    const recovery = await recover(store, runtime, network, logger, mobility);
    // Volume creations/deletions and attaches/detaches a crash cut short are finished.
    await volumes
      .recover()
      .catch((err: unknown) => logger.error({ err }, 'volume recovery failed'));
    // TTL expiries are stored on the rows: re-arm them (ones that passed meanwhile fire now).
    for (const vm of await store.listVmsByStatus(['running'])) ttl.watch(vm);

    const published = new PublishedServices(ctx);
    const startProxy = (port: number) =>
      startServiceProxy({
        store,
        events,
        logger,
        host: opts.host ?? '127.0.0.1',
        port,
        domain: opts.proxy?.domain ?? 'localhost',
        tls: opts.tls,
        timeouts: {
          ...(opts.proxy?.connectTimeoutMs ? { connectMs: opts.proxy.connectTimeoutMs } : {}),
          ...(opts.proxy?.responseTimeoutMs ? { responseMs: opts.proxy.responseTimeoutMs } : {}),
        },
      });
    try {
      proxy = await startProxy(opts.proxy?.port ?? 0);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!opts.proxy?.optional || (code !== 'EADDRINUSE' && code !== 'EACCES')) throw err;
      logger.warn(
        { err, port: opts.proxy.port },
        'service proxy: its default port is taken (set FASTVM_PROXY_PORT); using a free port',
      );
      proxy = await startProxy(0);
    }
    const proxyAddress = proxy.address;
    logger.info({ ...proxyAddress }, 'service proxy listening');

    let shuttingDown = false;
    const { app, servers } = await buildApp({
      services: {
        store,
        vms,
        snapshots,
        forks,
        lineage: new LineageService(store),
        lifecycle,
        consoles,
        execs,
        files,
        quotas,
        volumes,
        metrics,
        ...(opts.metricsToken ? { metricsToken: opts.metricsToken } : {}),
        sshKeys: new SshKeyService(store),
        published,
        proxyAddress: () => proxyAddress,
        ...(mobility
          ? { internalSnapshots: { runtime, mobility, secret: opts.cluster!.secret } }
          : {}),
        ...(opts.pricing ? { pricing: opts.pricing } : {}),
      },
      logger,
      isShuttingDown: () => shuttingDown,
      ...(opts.dashboardDir !== false
        ? { dashboardDir: opts.dashboardDir ?? defaultDashboardDir() }
        : {}),
    });
    let listener: Listener;
    try {
      listener = await listen(servers, {
        host: opts.host ?? '127.0.0.1',
        port: opts.port ?? 8080,
        tls: opts.tls,
        logger,
      });
    } catch (err) {
      await app.close();
      throw err;
    }
    // Guests reach the storage URLs through their gateway, on a port of its own (the API port
    // stays closed to them).
    if (network.gateways && network.gateways.length > 0) {
      try {
        storageListener = await startStorageListener(
          files,
          logger,
          network.gateways,
          opts.storage?.port ?? 0,
        );
        await network.allowHostTcpPort?.(storageListener.port);
        files.publicBaseUrl ??= storageListener.baseUrl;
        logger.info({ url: storageListener.baseUrl }, 'file-transfer storage listening for VMs');
      } catch (err) {
        listener.destroy();
        await app.close();
        throw err;
      }
    }
    if (opts.ssh) {
      try {
        sshGateway = await startSshGateway({
          host: opts.ssh.host ?? listener.host,
          port: opts.ssh.port,
          dataDir: opts.dataDir,
          store,
          runtime,
          logger,
        });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (opts.ssh.optional && (code === 'EADDRINUSE' || code === 'EACCES')) {
          logger.warn(
            { err, port: opts.ssh.port },
            'SSH gateway not started: its port is taken (set FASTVM_SSH_PORT)',
          );
        } else {
          listener.destroy();
          await storageListener?.close();
          await app.close();
          throw err;
        }
      }
    }
    const hostForUrl = listener.host.includes(':') ? `[${listener.host}]` : listener.host;
    const url = `${listener.secure ? 'https' : 'http'}://${hostForUrl}:${listener.port}`;
    logger.info({ url }, 'FastVM API listening');

    let closing: Promise<void> | undefined;
    const graceMs = opts.shutdownGraceMs ?? 30_000;
    return {
      url,
      port: listener.port,
      bootstrapKey: boot.key,
      bootstrapKeyGenerated: boot.generated,
      bootstrapKeyFile: boot.keyFile,
      ...(sshGateway
        ? {
            ssh: {
              host: sshGateway.host,
              port: sshGateway.port,
              hostKeyFingerprint: sshGateway.hostKeyFingerprint,
              hostPublicKey: sshGateway.hostPublicKey,
            },
          }
        : {}),
      app,
      store,
      recovery,
      proxy: proxyAddress,
      ...(mobility ? { mobility } : {}),
      close() {
        closing ??= (async () => {
          shuttingDown = true;
          await ttl?.stop();
          await Promise.all([
            listener.close(graceMs),
            storageListener?.close(),
            sshGateway?.close(),
            proxy?.close(graceMs),
          ]);
          files?.close();
          await mobility?.close();
          if (!(await tasks.drain(graceMs))) {
            logger.warn({ pending: tasks.size }, 'shutting down with VM operations in flight');
          }
          await app.close();
          execs.close();
          unsubscribe?.();
          await runtime.detach();
          await network.close();
          await store.close();
          logger.info('FastVM API stopped');
        })();
        return closing;
      },
      async kill() {
        shuttingDown = true;
        void mobility?.close();
        void ttl?.stop();
        files?.close();
        void storageListener?.close();
        void sshGateway?.close();
        proxy?.destroy();
        listener.destroy();
        unsubscribe?.();
        await app.close().catch(() => {});
        await store.close().catch(() => {});
      },
    };
  } catch (err) {
    unsubscribe?.();
    await ttl?.stop();
    files?.close();
    await storageListener?.close();
    proxy?.destroy();
    await store.close().catch(() => {});
    throw err;
  }
}
