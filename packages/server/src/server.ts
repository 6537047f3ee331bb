/**
 * `startServer`: opens the store, bootstraps the first API key, reconciles records with the
 * runtime (re-adopting surviving VMs), builds the app and listens. `close()` shuts down
 * gracefully; VMs keep running (`runtime.detach()`) and are adopted again at the next start.
 * @module
 */
import fs from 'node:fs/promises';
import { loadGuestImage, type Runtime } from '@fastvm/runtime';
import type { Logger } from 'pino';
import { createLogger } from './logging.js';
import { buildApp, type App, type ClusterAppOptions } from './app.js';
import { DEFAULT_QUOTA_LIMITS, type Pricing, type QuotaValues } from './domain/index.js';
import { listen, type Listener } from './http/listener.js';
import type { ServiceContext, ServiceSettings } from './services/context.js';
import { ConsoleService } from './services/console.js';
import { ExecSessions } from './services/exec-sessions.js';
import { NoopNetworkManager, type NetworkManager } from './services/network.js';
import { recover, type RecoveryReport } from './services/recovery.js';
import { BuildService, type BuildSettings } from './services/builds/build-service.js';
import type { ImageSource } from './services/image-source.js';
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
import { OciImageSource } from './images/oci-image-source.js';
import { ClusterRouter } from './cluster/forward.js';
import { HostRegistry } from './cluster/host-registry.js';
import { ClusterForkSpread } from './cluster/fork-spread.js';
import clusterInternalRoutes from './cluster/internal-routes.js';
import type { ClusterPeers, SnapshotMobility } from './cluster/seams.js';
import { loadHostId } from './cluster/host-id.js';
import type { KyselyStore } from './store/kysely-store.js';
import { ClusterSnapshotMobility } from './cluster/snapshot-mobility.js';
import internalSnapshotRoutes from './routes/internal-snapshots.js';

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
  /**
   * What a build's `FROM` / an import's `source.image` resolves through. Default: an
   * `OciImageSource` over `<dataDir>/images` when the guest image (its agent) is built; `false`:
   * none.
   */
  images?: ImageSource | false;
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
  /** Build limits (context size, concurrency, step-cache size; `services/builds/`). */
  builds?: Partial<BuildSettings>;
  /**
   * Several hosts (`cluster/`, docs/ARCHITECTURE.md "Several hosts"): on when the store is
   * PostgreSQL and `secret` is set; otherwise ignored (one machine, nothing changes).
   */
  cluster?: ClusterOptions;
}

/** See `StartServerOptions.cluster`. */
export interface ClusterOptions {
  /** The shared secret of the internal channel (`FASTVM_CLUSTER_SECRET`). */
  secret: string;
  /** This host's id (`FASTVM_HOST_ID`; default: one generated once into `<dataDir>/host-id`). */
  hostId?: string;
  /** How peers reach this host's API (`FASTVM_ADVERTISE_URL`; default: the listener's URL). */
  advertiseUrl?: string;
  /** Heartbeat interval (`FASTVM_HEARTBEAT_MS`, default 2000). */
  heartbeatMs?: number;
  /** A host silent for longer is lost (`FASTVM_HOST_TIMEOUT_MS`, default 15000). */
  hostTimeoutMs?: number;
  /** Machine types whose golden this host builds at start (placement prefers holders). */
  goldens?: string[];
  /** Guest image version, recorded for placement. */
  guestImage?: string;
  /** How long a forward waits for a connection to the serving host (default 3000 ms). */
  connectTimeoutMs?: number;
  /**
   * Snapshot mobility. Absent: `ClusterSnapshotMobility` over the host registry (a restore or
   * fork may run on any host, which pulls the snapshot first). An instance, or a factory given
   * the registry (`ClusterPeers`) and this host's store and runtime, replaces it; `false`: none
   * (a restore runs on the host that took the snapshot).
   */
  mobility?: SnapshotMobility | ((deps: MobilityDeps) => SnapshotMobility) | false;
  /**
   * Other hosts each ready snapshot is copied to in the background (`FASTVM_SNAPSHOT_REPLICAS`,
   * 0–16, default 0), so it outlives the loss of the host that took it (built-in mobility).
   */
  snapshotReplicas?: number;
  /**
   * More route plugins under `/internal/v1` behind the cluster token (e.g. mobility's layer
   * streams, `routes/internal-snapshots.ts`); each gets `{ services }` like the public routes.
   */
  internalRoutes?: ClusterAppOptions['internalRoutes'];
}

/** What a snapshot mobility factory is given (`ClusterOptions.mobility`). */
export interface MobilityDeps {
  peers: ClusterPeers;
  hostId: string;
  store: Store;
  runtime: Runtime;
  logger: Logger;
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
  /** The image source the services use (none without a guest image). */
  images?: ImageSource;
  /** This host's registry entry when in cluster mode. */
  cluster?: HostRegistry;
  /** Snapshot mobility, in cluster mode (unless turned off). */
  mobility?: SnapshotMobility;
  /** Graceful: stop accepting, drain, detach from the runtime (VMs survive), close the DB. */
  close(): Promise<void>;
  /**
   * Simulated crash for tests: drops connections and the DB handle without draining or
   * detaching, leaving durable state exactly as a kill -9 would.
   */
  kill(): Promise<void>;
}

/**
 * The OCI image source over `<dataDir>/images`, when the guest image is built (its agent goes
 * into every imported root filesystem); none otherwise (a fake-runtime server on a bare host).
 */
function defaultImageSource(dataDir: string, logger: Logger): ImageSource | undefined {
  let agent: string;
  try {
    agent = loadGuestImage().agent;
  } catch {
    return undefined;
  }
  return new OciImageSource({
    dataDir,
    agent,
    ...(process.env.FASTVM_IMAGE_MAX_BYTES
      ? { maxBytes: Number(process.env.FASTVM_IMAGE_MAX_BYTES) }
      : {}),
    log: (msg) => logger.info(msg),
  });
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
  let builds: BuildService | undefined;
  let registry: HostRegistry | undefined;
  let mobility: SnapshotMobility | undefined;
  // Background replication and pulls end with the server.
  const closeMobility = async (): Promise<void> => {
    await (mobility as { close?: () => Promise<void> } | undefined)?.close?.();
  };
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
    const clusterOn = Boolean(opts.cluster?.secret) && store.dialect === 'postgres';
    if (opts.cluster?.secret && !clusterOn) {
      logger.warn('FASTVM_CLUSTER_SECRET is set but the store is SQLite: running as one host');
    }
    // In a cluster every host admits against its own capacity, which placement reads.
    const hostCapacity =
      opts.hostCapacity || clusterOn ? new HostCapacity(store, opts.hostCapacity ?? {}) : undefined;
    const quotas = new QuotaService(
      store,
      { ...DEFAULT_QUOTA_LIMITS, ...opts.quotaDefaults },
      hostCapacity,
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
    const images =
      opts.images === false ? undefined : (opts.images ?? defaultImageSource(opts.dataDir, logger));
    const metrics = new Metrics({ store, quotas, runtime });
    const volumes = new VolumeService({
      store,
      runtime,
      quotas,
      events,
      logger,
      dataDir: opts.dataDir,
    });
    // The registry exists before the services (a fork spreads through it); it registers just
    // before the recovery below.
    if (clusterOn && opts.cluster && hostCapacity) {
      const hostId = opts.cluster.hostId ?? (await loadHostId(opts.dataDir));
      registry = new HostRegistry(
        store as KyselyStore,
        {
          hostId,
          advertiseUrl: opts.cluster.advertiseUrl ?? '',
          memoryLimitMiB: hostCapacity.memoryLimitMiB,
          vcpuLimit: hostCapacity.vcpuLimit,
          machineTypes: opts.cluster.goldens ?? [],
          guestImage: opts.cluster.guestImage ?? '',
        },
        logger,
        {
          ...(opts.cluster.heartbeatMs ? { intervalMs: opts.cluster.heartbeatMs } : {}),
          ...(opts.cluster.hostTimeoutMs ? { timeoutMs: opts.cluster.hostTimeoutMs } : {}),
        },
        // Back after being declared lost while running: its VMs marked `error` are stopped.
        async () => {
          for (const vm of await store.listVmsByStatus(['error'])) {
            if (!runtime.get(vm.id)) continue;
            await runtime.destroy(vm.id).catch((err: unknown) => {
              logger.warn({ err, vmId: vm.id }, 'could not stop a VM of the lost period');
            });
            await network.release(vm.id).catch(() => {});
          }
        },
      );
    }
    // Snapshot mobility over the registry's hosts (the default), the caller's, or none.
    const mobilityOpt = opts.cluster?.mobility;
    if (registry && opts.cluster && mobilityOpt !== false) {
      const deps: MobilityDeps = {
        peers: registry,
        hostId: registry.hostId,
        store,
        runtime,
        logger,
      };
      mobility =
        typeof mobilityOpt === 'function'
          ? mobilityOpt(deps)
          : (mobilityOpt ??
            new ClusterSnapshotMobility({
              ...deps,
              secret: opts.cluster.secret,
              replicas: opts.cluster.snapshotReplicas ?? 0,
            }));
    }
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
    const forks = new ForkService(
      ctx,
      vms,
      registry && opts.cluster
        ? new ClusterForkSpread(
            registry,
            opts.cluster.secret,
            (id) => runtime.hasSnapshot(id),
            mobility,
          )
        : undefined,
    );
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
    if (registry) {
      // Before recovery: from here on this host's queries see its own rows only, and a peer
      // checking for lost hosts sees a fresh heartbeat (so it does not race the recovery).
      const hostId = registry.hostId;
      const before = await registry.register();
      store.bindHost(hostId);
      // Heartbeats from now on: a slow start (recovery, networking) must not look like a loss.
      registry.start();
      logger.info({ hostId, previousState: before ?? 'new' }, 'cluster: host registered');
    }
    const recovery = await recover(
      store,
      runtime,
      network,
      logger,
      mobility && registry
        ? { holders: (id: string) => mobility!.holders(id), selfId: registry.hostId }
        : undefined,
    );
    // After the network's reconcile (which frees ports no live VM has): pool VMs get ports of
    // their own from now on, plugged in while they wait.
    if (network.pool) runtime.setPoolNetwork?.(network.pool);
    builds = new BuildService(ctx, files, {
      dataDir: opts.dataDir,
      ...(images ? { images } : {}),
      ...(opts.builds ? { settings: opts.builds } : {}),
    });
    builds.snapshots = snapshots;
    const failedBuilds = await builds.recover();
    if (failedBuilds.length > 0) {
      logger.warn({ builds: failedBuilds }, 'builds cut off by the restart marked failed');
    }
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
        builds,
        quotas,
        volumes,
        metrics,
        ...(opts.metricsToken ? { metricsToken: opts.metricsToken } : {}),
        sshKeys: new SshKeyService(store),
        published,
        ...(images ? { images } : {}),
        proxyAddress: () => proxyAddress,
        ...(mobility instanceof ClusterSnapshotMobility
          ? { internalSnapshots: { runtime, mobility } }
          : {}),
        ...(opts.pricing ? { pricing: opts.pricing } : {}),
      },
      logger,
      isShuttingDown: () => shuttingDown,
      ...(registry && opts.cluster
        ? {
            cluster: {
              secret: opts.cluster.secret,
              router: new ClusterRouter({
                registry,
                store,
                secret: opts.cluster.secret,
                logger,
                hasSnapshot: (id) => runtime.hasSnapshot(id),
                ...(mobility ? { mobility } : {}),
                ...(opts.cluster.connectTimeoutMs
                  ? { connectTimeoutMs: opts.cluster.connectTimeoutMs }
                  : {}),
              }),
              describeHost: async () => (await registry?.host(registry.hostId)) ?? {},
              internalRoutes: [
                clusterInternalRoutes,
                internalSnapshotRoutes,
                ...(opts.cluster.internalRoutes ?? []),
              ],
            },
          }
        : {}),
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
    if (registry) {
      if (!opts.cluster?.advertiseUrl) await registry.setAdvertiseUrl(url);
    }

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
      ...(images ? { images } : {}),
      ...(registry ? { cluster: registry } : {}),
      ...(mobility ? { mobility } : {}),
      close() {
        closing ??= (async () => {
          shuttingDown = true;
          await registry?.stop();
          await ttl?.stop();
          await Promise.all([
            listener.close(graceMs),
            storageListener?.close(),
            sshGateway?.close(),
            proxy?.close(graceMs),
          ]);
          files?.close();
          await builds?.close();
          await closeMobility();
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
        void registry?.stop();
        void closeMobility();
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
    await registry?.stop();
    await closeMobility();
    await ttl?.stop();
    files?.close();
    await storageListener?.close();
    proxy?.destroy();
    await store.close().catch(() => {});
    throw err;
  }
}
