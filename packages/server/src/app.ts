/**
 * Builds the Fastify application: body parsing, auth, request ids, errors, routes and the
 * OpenAPI document. The process entry (`main.ts`) and tests go through `startServer`
 * (`server.ts`), which adds the store, runtime recovery and the listener.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import websocket from '@fastify/websocket';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type RawServerDefault,
} from 'fastify';
import type { Logger } from 'pino';
import { authenticate } from './auth.js';
import { DomainError } from './domain/index.js';
import { ApiError, retryHint } from './errors.js';
import {
  createProtocolServers,
  type ProtocolServers,
  type RequestHandler,
} from './http/listener.js';
import { buildOpenApi, type RouteDoc } from './http/openapi.js';
import { fromDomainError } from './http/error-mapping.js';
import { jsonSerializerCompiler, zodValidatorCompiler, type ZodTypeProvider } from './http/zod.js';
import healthRoutes from './routes/health.js';
import fileRoutes from './routes/files.js';
import lifecycleRoutes from './routes/lifecycle.js';
import { handleStorage } from './routes/storage.js';
import consoleRoutes from './routes/console.js';
import orgRoutes from './routes/org.js';
import snapshotRoutes from './routes/snapshots.js';
import unimplementedRoutes from './routes/unimplemented.js';
import vmRoutes from './routes/vms.js';
import { STORAGE_PREFIX, type FileService } from './services/files.js';
import type { LifecycleService } from './services/lifecycle.js';
import type { QuotaService } from './services/quota.js';
import type { ConsoleService } from './services/console.js';
import type { SnapshotService } from './services/snapshot-service.js';
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
  /** Console tokens and WebSocket sessions. */
  consoles: ConsoleService;
  lifecycle: LifecycleService;
  /** Limits and usage (`GET /v1/org/quotas`). */
  quotas: QuotaService;
  /** Presigned file transfer; its `/storage/` URLs are served before Fastify sees them. */
  files: FileService;
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
}

/** A ready (not listening) app and the protocol servers bound to it. */
export interface BuiltApp {
  app: App;
  /** The HTTP/1.1 and HTTP/2 servers the app is bound to (see `http/listener.ts`). */
  servers: ProtocolServers;
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Builds and readies the Fastify app. It does not listen: `http/listener.ts` feeds it
 * connections (see `startServer`); tests of pure routing can use `app.inject()`.
 */
export async function buildApp(opts: BuildAppOptions): Promise<BuiltApp> {
  let servers: ProtocolServers | undefined;
  const app = Fastify({
    loggerInstance: opts.logger as FastifyBaseLogger,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    // Both protocol servers route into Fastify; `app.server` is the HTTP/1.1 one, which also
    // receives WebSocket upgrades.
    serverFactory: (handler) => {
      const fastify = handler as unknown as RequestHandler;
      const files = opts.services.files as FileService | undefined;
      // Storage URLs stream their bodies to disk, so they bypass Fastify's body parsing.
      servers = createProtocolServers((req, res) =>
        files && req.url?.startsWith(STORAGE_PREFIX)
          ? handleStorage(files, opts.logger, req, res)
          : fastify(req, res),
      );
      return servers.h1;
    },
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
    },
    routerOptions: { maxParamLength: 2048, ignoreTrailingSlash: true },
    return503OnClosing: true,
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
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (opts.isShuttingDown?.()) {
      throw new ApiError('unavailable', 'server is shutting down', {}, true);
    }
    // Every /v1 route needs a key unless marked public; unknown /v1 paths too (401 before 404).
    const path = request.url;
    if (request.routeOptions.config?.public === true || !path.startsWith('/v1/')) return;
    request.auth = await authenticate(opts.services.store, request);
  });

  // Fastify asks for `Connection: close` after body errors; that header is illegal in HTTP/2.
  app.addHook('onSend', async (request, reply) => {
    if (request.raw.httpVersionMajor === 2 && reply.hasHeader('connection')) {
      reply.removeHeader('connection');
    }
  });

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(async (request) => {
    throw new ApiError('not_found', `no route for ${request.method} ${request.url.split('?')[0]}`);
  });

  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });

  const pluginOpts = {
    services: opts.services,
    execBodyLimit: opts.execBodyLimit ?? 16 * 1024 * 1024,
  };
  await app.register(healthRoutes);
  await app.register(vmRoutes, pluginOpts);
  await app.register(consoleRoutes, pluginOpts);
  await app.register(lifecycleRoutes, pluginOpts);
  await app.register(fileRoutes, pluginOpts);
  await app.register(snapshotRoutes, pluginOpts);
  await app.register(orgRoutes, pluginOpts);
  await app.register(unimplementedRoutes, pluginOpts);

  let doc: unknown;
  app.get('/openapi.json', { config: { public: true, hidden: true } }, async (_request, reply) => {
    doc ??= buildOpenApi(routes);
    return reply.type('application/json; charset=utf-8').send(doc);
  });

  await app.ready();
  if (!servers) throw new Error('serverFactory was not called');
  return { app, servers };
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
  }
  const retry = retryHint(apiError.statusCode, request.method, apiError.shouldRetry);
  if (retry !== undefined) reply.header('x-should-retry', String(retry));
  void reply
    .code(apiError.statusCode)
    .type('application/json; charset=utf-8')
    .send(apiError.toBody());
}
