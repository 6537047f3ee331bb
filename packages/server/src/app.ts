/**
 * Builds the Fastify application: body parsing, auth, request ids, errors, routes and the
 * OpenAPI document. The process entry (`main.ts`) and tests go through `startServer`
 * (`server.ts`), which adds the store, runtime recovery and the listener.
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import websocket from '@fastify/websocket';
import Fastify, {
  type FastifyPluginAsync,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type RawServerDefault,
} from 'fastify';
import type { Logger } from 'pino';
import { ApiKeyResolver } from './auth.js';
import type { ClusterRouter } from './cluster/forward.js';
import { INTERNAL_PREFIX, requireClusterToken } from './cluster/internal-auth.js';
import { DomainError, type Pricing } from './domain/index.js';
import { ApiError, retryHint } from './errors.js';
import {
  createProtocolServers,
  type ProtocolServers,
  type RequestHandler,
} from './http/listener.js';
import { buildOpenApi, type RouteDoc } from './http/openapi.js';
import { requestIdOf } from './http/request-id.js';
import type { ImageSource } from './services/image-source.js';
import { fromDomainError } from './http/error-mapping.js';
import { fastExec } from './http/fast-exec.js';
import { fastReads } from './http/fast-reads.js';
import { jsonSerializerCompiler, zodValidatorCompiler, type ZodTypeProvider } from './http/zod.js';
import healthRoutes from './routes/health.js';
import fileRoutes from './routes/files.js';
import lifecycleRoutes from './routes/lifecycle.js';
import { handleStorage } from './routes/storage.js';
import consoleRoutes from './routes/console.js';
import { registerDashboard } from './routes/dashboard.js';
import type { InternalSnapshotDeps } from './routes/internal-snapshots.js';
import execRoutes from './routes/execs.js';
import orgRoutes from './routes/org.js';
import branchingRoutes from './routes/branching.js';
import buildRoutes from './routes/builds.js';
import type { BuildService } from './services/builds/build-service.js';
import snapshotRoutes from './routes/snapshots.js';
import serviceRoutes from './routes/services.js';
import sshKeyRoutes from './routes/ssh-keys.js';
import unimplementedRoutes from './routes/unimplemented.js';
import volumeRoutes from './routes/volumes.js';
import type { VolumeService } from './services/volume-service.js';
import vmRoutes from './routes/vms.js';
import { ExecSessions } from './services/exec-sessions.js';
import { STORAGE_PREFIX, type FileService } from './services/files.js';
import type { LifecycleService } from './services/lifecycle.js';
import type { PublishedServices } from './services/published-services.js';
import type { ProxyAddress } from './proxy/hostnames.js';
import type { QuotaService } from './services/quota.js';
import type { Metrics } from './services/metrics.js';
import { installMetrics } from './routes/metrics.js';
import type { ConsoleService } from './services/console.js';
import type { ForkService } from './services/fork.js';
import type { LineageService } from './services/lineage.js';
import type { SnapshotService } from './services/snapshot-service.js';
import type { SshKeyService } from './services/ssh-keys.js';
import type { VmService } from './services/vm-service.js';
import type { Store } from './store/index.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Route needs no API key. */
    public?: boolean;
    /** OpenAPI: one-line summary and operation id. */
    summary?: string;
    operationId?: string;
    tags?: string[];
    /** OpenAPI: leave the route out of the document. */
    hidden?: boolean;
  }
}

/** The Fastify instance type used by every route module. */
export type App = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  FastifyBaseLogger,
  ZodTypeProvider
>;

/** What route modules need; passed as plugin options. */
export interface AppServices {
  store: Store;
  vms: VmService;
  snapshots: SnapshotService;
  /** Fork N (`POST /v1/snapshots/{id}/fork`). */
  forks: ForkService;
  /** `GET /v1/snapshots/{id}/lineage`. */
  lineage: LineageService;
  /** Console tokens and WebSocket sessions. */
  consoles: ConsoleService;
  lifecycle: LifecycleService;
  /** Limits and usage (`GET /v1/org/quotas`). */
  quotas: QuotaService;
  /** `/v1/volumes` and VM attachments. */
  volumes: VolumeService;
  /** Served at `/metrics` and fed by the request hook (none: no `/metrics`). */
  metrics?: Metrics;
  /** Bearer token that opens `/metrics` to non-loopback callers (`FASTVM_METRICS_TOKEN`). */
  metricsToken?: string;
  /** Presigned file transfer; its `/storage/` URLs are served before Fastify sees them. */
  files: FileService;
  /** Builds and snapshot imports (none: those routes answer 501). */
  builds?: BuildService;
  /** The caller org's SSH keys (default: one over `store`). */
  sshKeys?: SshKeyService;
  /** Exec sessions (default: one over `vms` with the default limits). */
  execs?: ExecSessions;
  /** What `GET /v1/pricing` answers (default: `DEFAULT_PRICING`). */
  pricing?: Pricing;
  /** Published services (default: one over `store` without networking). */
  published?: PublishedServices;
  /** Where the service proxy listens, for the URLs in service responses. */
  proxyAddress?: () => ProxyAddress;
  /** Image references → bootable bases (builds' `FROM`, image imports); none: no pulls. */
  images?: ImageSource;
  /** Snapshot mobility's internal routes (`routes/internal-snapshots.ts`); absent: none. */
  internalSnapshots?: InternalSnapshotDeps;
}

/** Inputs of `buildApp`. */
export interface BuildAppOptions {
  services: AppServices;
  logger: Logger;
  /** Default request body limit (bytes); exec has its own larger one. */
  bodyLimit?: number;
  /** Largest exec request body (base64 stdin), bytes. */
  execBodyLimit?: number;
  /** Checked on every request; true answers 503 while the server drains. */
  isShuttingDown?: () => boolean;
  /** The built web console served at `/` (`routes/dashboard.ts`); absent: not served. */
  dashboardDir?: string;
  /**
   * Several hosts (`cluster/`): the forwarding layer (`router`, a `preValidation` hook in front
   * of every route) and the internal routes under `/internal/v1`, guarded by the cluster token
   * (`secret`). Absent on one machine.
   */
  cluster?: ClusterAppOptions;
}

/** See `BuildAppOptions.cluster`. */
export interface ClusterAppOptions {
  router: ClusterRouter;
  secret: string;
  /** Route plugins registered under `/internal/v1` behind the token check (given the services). */
  internalRoutes?: readonly ((app: App, opts: { services: AppServices }) => Promise<void>)[];
  /** What `GET /internal/v1/host` answers (this host's id and state). */
  describeHost?: () => Promise<unknown>;
}

/** A ready (not listening) app and the protocol servers bound to it. */
export interface BuiltApp {
  app: App;
  /** The HTTP/1.1 and HTTP/2 servers the app is bound to (see `http/listener.ts`). */
  servers: ProtocolServers;
}

/** How long the rest of a refused request body is read and dropped before the connection goes. */
const UNREAD_BODY_DRAIN_MS = 10_000;

/**
 * Builds and readies the Fastify app. It does not listen: `http/listener.ts` feeds it
 * connections (see `startServer`); tests of pure routing can use `app.inject()`.
 */
export async function buildApp(opts: BuildAppOptions): Promise<BuiltApp> {
  let servers: ProtocolServers | undefined;
  const keys = new ApiKeyResolver(opts.services.store);
  const fast = fastReads({
    keys,
    store: opts.services.store,
    metrics: opts.services.metrics,
    isShuttingDown: opts.isShuttingDown,
    // A read is served where it arrives, also in a cluster: named as the forwarding layer does.
    ...(opts.cluster ? { servedBy: opts.cluster.router.selfId } : {}),
  });
  const execBodyLimit = opts.execBodyLimit ?? 16 * 1024 * 1024;
  // Execs are forwarded between hosts (`cluster/`), which the fast path does not do.
  const exec = opts.cluster
    ? undefined
    : fastExec({
        keys,
        store: opts.services.store,
        vms: opts.services.vms,
        logger: opts.logger,
        bodyLimit: execBodyLimit,
        metrics: opts.services.metrics,
        isShuttingDown: opts.isShuttingDown,
        replay: async ({ url, headers, body }) => {
          const res = await app.inject({ method: 'POST', url, headers, payload: body });
          return { status: res.statusCode, headers: res.headers, body: res.rawPayload };
        },
      });
  const app = Fastify({
    loggerInstance: opts.logger as FastifyBaseLogger,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    // Both protocol servers route into Fastify; `app.server` is the HTTP/1.1 one, which also
    // receives WebSocket upgrades.
    serverFactory: (handler) => {
      const fastify = handler as unknown as RequestHandler;
      const files = opts.services.files as FileService | undefined;
      // Storage URLs stream their bodies to disk, so they bypass Fastify's body parsing.
      const toApp: RequestHandler = (req, res) => fast.request(req, res, () => fastify(req, res));
      servers = createProtocolServers(
        (req, res) =>
          files && req.url?.startsWith(STORAGE_PREFIX)
            ? handleStorage(files, opts.logger, req, res)
            : exec
              ? exec.request(req, res, () => toApp(req, res))
              : toApp(req, res),
        exec
          ? (stream, headers, next) =>
              exec.stream(stream, headers, () => fast.stream(stream, headers, next))
          : fast.stream,
      );
      return servers.h1;
    },
    genReqId: (req) => requestIdOf(req.headers),
    // Longer than any request line Node accepts (16 KiB of headers), so an over-long id is an
    // unknown id (401/404 like any other) rather than a router error.
    routerOptions: { maxParamLength: 16 * 1024, ignoreTrailingSlash: true },
    return503OnClosing: true,
    // Requests the router refuses (a malformed percent escape) get the API's error shape.
    frameworkErrors: (error, request, reply) => errorHandler(error, request, reply),
    // Requests Node's parser refuses are answered by the listener (`http/listener.ts`), which
    // knows whether a response is still under way on the connection.
    clientErrorHandler: () => {},
  }).withTypeProvider<ZodTypeProvider>();

  app.setValidatorCompiler(zodValidatorCompiler);
  app.setSerializerCompiler(jsonSerializerCompiler);
  installBodyParsers(app);

  const routes: RouteDoc[] = [];
  app.addHook('onRoute', (route) => {
    if (route.config?.hidden || route.method === 'HEAD') return;
    routes.push({
      method: route.method,
      url: route.url,
      schema: route.schema as RouteDoc['schema'],
      config: route.config,
    });
  });

  app.decorateRequest('auth', null);
  // HTTP/1.1 requests with an Upgrade header (a WebSocket handshake, or the `Upgrade: h2c` of
  // `curl --http2`) reach the app through @fastify/websocket's 'upgrade' listener whatever their
  // path, on a socket that Node's HTTP parser has let go of. Only the console WebSocket upgrades
  // (the plugin is registered in its scope alone); every other route ignores the header
  // (RFC 9110 §7.8) and answers as usual, and the connection then closes, as nothing would read
  // a next request on it.
  // One hook for everything a request goes through before its route (each async hook costs a
  // promise and a tick per request): the Host rule, upgrade handling, the request id, shutdown,
  // and authentication.
  const files = opts.services.files as FileService | undefined;
  app.addHook('onRequest', async (request, reply) => {
    const raw = request.raw;
    if (raw.httpVersion === '1.1' && raw.headers.host === undefined) {
      // RFC 9112 §3.2 (Node's own refusal of this has no body; see `requireHostHeader`).
      throw new ApiError('bad_request', 'an HTTP/1.1 request needs a Host header', {
        field: 'host',
      });
    }
    const upgrade = isUpgradeRequest(raw);
    if (upgrade) {
      const socket = raw.socket;
      reply.header('connection', 'close');
      reply.raw.once('finish', () => socket.destroySoon());
    }
    reply.header('x-request-id', request.id);
    if (opts.isShuttingDown?.()) {
      throw new ApiError('unavailable', 'server is shutting down', {}, true);
    }
    // Every /v1 route needs a key unless marked public; unknown /v1 paths too (401 before 404).
    if (request.routeOptions.config?.public !== true && request.url.startsWith('/v1/')) {
      request.auth = await keys.authenticate(request);
    }
    if (upgrade) refuseUpgradeBody(request, reply);
  });
  // Node does not parse the body of an upgrade request (it belongs to the new protocol), so a
  // route would see none: refuse rather than act on a request without its body. Storage URLs
  // (served in front of Fastify for ordinary requests) get their usual answer.
  function refuseUpgradeBody(request: FastifyRequest, reply: FastifyReply): void {
    const raw = request.raw;
    if (declaresBody(raw)) {
      throw new ApiError(
        'bad_request',
        'a request with an Upgrade header cannot carry a body: send it without Upgrade ' +
          '(curl: --http1.1 or --http2-prior-knowledge)',
        { field: 'upgrade' },
      );
    }
    if (files && raw.url?.startsWith(STORAGE_PREFIX)) {
      reply.hijack();
      reply.raw.setHeader('connection', 'close');
      handleStorage(files, opts.logger, raw, reply.raw);
    }
  }

  // Fastify asks for `Connection: close` after body errors (a 413, invalid JSON). That header
  // is illegal in HTTP/2. Over HTTP/1.1, closing with the rest of a refused upload unread makes
  // the kernel reset the connection, and the client sees the reset instead of the answer: the
  // connection stays open and Node reads and drops the rest of the body, for a while.
  app.addHook('onSend', async (request, reply) => {
    const raw = request.raw;
    if (!reply.hasHeader('connection') || isUpgradeRequest(raw)) return;
    if (raw.httpVersionMajor === 2 || raw.complete) {
      reply.removeHeader('connection');
      return;
    }
    reply.removeHeader('connection');
    reply.raw.once('finish', () => {
      if (raw.complete) return;
      const timer = setTimeout(() => raw.socket.destroy(), UNREAD_BODY_DRAIN_MS).unref();
      raw.once('end', () => clearTimeout(timer));
    });
  });

  app.setErrorHandler(errorHandler);
  let dashboardPage: ReturnType<typeof registerDashboard> | undefined;
  app.setNotFoundHandler(async (request, reply) => {
    // A browser asking for a page of the web console (its routes are client-side).
    if (dashboardPage?.(request, reply)) return reply;
    throw new ApiError('not_found', `no route for ${request.method} ${request.url.split('?')[0]}`);
  });

  const pluginOpts = {
    // One session store for the exec routes of vms.ts and execs.ts.
    services: {
      ...opts.services,
      execs: opts.services.execs ?? new ExecSessions(opts.services.vms),
    },
    execBodyLimit,
  };
  const cluster = opts.cluster;
  if (cluster) {
    // After authentication (onRequest) and body parsing, before validation: a request served by
    // another host is streamed there as it came (`cluster/forward.ts`).
    app.addHook('preValidation', async (request, reply) => {
      if (await cluster.router.route(request, reply)) return reply;
    });
    await app.register(
      async (scope: App) => {
        scope.addHook('onRequest', requireClusterToken(cluster.secret));
        scope.get('/host', { config: { hidden: true } }, async () =>
          cluster.describeHost ? cluster.describeHost() : { id: cluster.router.selfId },
        );
        for (const plugin of cluster.internalRoutes ?? []) {
          await scope.register(plugin as FastifyPluginAsync<{ services: AppServices }>, pluginOpts);
        }
      },
      { prefix: INTERNAL_PREFIX },
    );
  }
  installMetrics(app, opts.services);
  await app.register(healthRoutes);
  await app.register(vmRoutes, pluginOpts);
  await app.register(execRoutes, pluginOpts);
  // The WebSocket plugin wraps every route registered beside it (an upgrade on a route without
  // a WebSocket handler would answer 101 and close), so it shares a scope with the console only.
  await app.register(async (scope: App) => {
    await scope.register(websocket, {
      options: { maxPayload: 1024 * 1024 },
      // A client that breaks the WebSocket protocol (`ws` has sent it the close code already)
      // is no server error; anything else from the console's socket is.
      errorHandler: (error, socket, request) => {
        if ((error as NodeJS.ErrnoException).code?.startsWith('WS_ERR_')) {
          request.log.info({ err: error }, 'console WebSocket: protocol error from the client');
        } else {
          request.log.error({ err: error }, 'console WebSocket failed');
        }
        socket.terminate();
      },
    });
    await scope.register(consoleRoutes, pluginOpts);
  });
  await app.register(lifecycleRoutes, pluginOpts);
  await app.register(fileRoutes, pluginOpts);
  await app.register(snapshotRoutes, pluginOpts);
  await app.register(branchingRoutes, pluginOpts);
  await app.register(orgRoutes, pluginOpts);
  await app.register(sshKeyRoutes, pluginOpts);
  await app.register(serviceRoutes, pluginOpts);
  await app.register(volumeRoutes, pluginOpts);
  await app.register(buildRoutes, pluginOpts);
  await app.register(unimplementedRoutes, pluginOpts);
  if (opts.dashboardDir !== undefined) dashboardPage = registerDashboard(app, opts.dashboardDir);

  let doc: unknown;
  app.get('/openapi.json', { config: { public: true, hidden: true } }, async (_request, reply) => {
    doc ??= buildOpenApi(routes);
    return reply.type('application/json; charset=utf-8').send(doc);
  });

  await app.ready();
  if (!servers) throw new Error('serverFactory was not called');
  return { app, servers };
}

/** Whether Node handed this request to the 'upgrade' listener (HTTP/1.1 `Upgrade`). */
function isUpgradeRequest(raw: FastifyRequest['raw']): boolean {
  // `IncomingMessage.upgrade` is set by Node but missing from its type definitions.
  return raw.httpVersionMajor === 1 && (raw as { upgrade?: boolean }).upgrade === true;
}

/** Whether the request says a body follows. */
function declaresBody(raw: IncomingMessage): boolean {
  const length = raw.headers['content-length'];
  return raw.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** JSON bodies; an empty body (with or without a JSON content type) parses as `undefined`. */
function installBodyParsers(app: App): void {
  const parse = (
    _req: FastifyRequest,
    body: string | Buffer,
    done: (err: Error | null, body?: unknown) => void,
  ): void => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') return done(null, undefined);
    try {
      // Keys named __proto__ are refused outright rather than risk prototype pollution later.
      const value: unknown = text.includes('__proto__')
        ? JSON.parse(text, (key, v: unknown) => {
            if (key === '__proto__') throw new SyntaxError('__proto__ is not allowed');
            return v;
          })
        : JSON.parse(text);
      done(null, value);
    } catch (err) {
      done(
        new ApiError('bad_request', `invalid JSON body: ${(err as Error).message}`, {
          field: 'body',
        }),
      );
    }
  };
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, parse);
  // Be liberal: `curl -d` without a content type sends form encoding; treat bodies as JSON.
  app.addContentTypeParser('*', { parseAs: 'string' }, parse);
}

function errorHandler(
  error: FastifyError | ApiError,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  let apiError: ApiError;
  if (error instanceof ApiError) {
    apiError = error;
  } else if (error instanceof DomainError) {
    // What services throw; `http/error-mapping.ts` decides the status and body.
    apiError = fromDomainError(error);
  } else if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    apiError = new ApiError('payload_too_large', 'request body is too large');
  } else if (error.validation || (error.statusCode === 400 && error.code?.startsWith('FST_'))) {
    apiError = new ApiError('bad_request', error.message);
  } else if (error.statusCode === 404) {
    apiError = new ApiError('not_found', error.message);
  } else if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
    apiError = new ApiError('bad_request', error.message);
  } else {
    request.log.error({ err: error }, 'unhandled error');
    apiError = new ApiError('internal', 'internal server error');
  }
  if (apiError.statusCode >= 500 && apiError.code !== 'not_implemented') {
    request.log.warn({ err: apiError.cause ?? apiError, code: apiError.code }, apiError.message);
  } else {
    request.log.info({ code: apiError.code, status: apiError.statusCode }, apiError.message);
  }
  const retry = retryHint(apiError.statusCode, request.method, apiError.shouldRetry);
  if (retry !== undefined) reply.header('x-should-retry', String(retry));
  if (apiError.retryAfterSec !== undefined)
    reply.header('retry-after', String(apiError.retryAfterSec));
  void reply
    .code(apiError.statusCode)
    .type('application/json; charset=utf-8')
    .send({ ...apiError.toBody(), requestId: request.id });
}
