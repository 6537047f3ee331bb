/**
 * The service proxy listener (`FASTVM_PROXY_PORT`, contract §4.4): a port of its own, bound like
 * the API, speaking HTTP/1.1 and h2c by sniffing or h2/HTTP/1.1 by ALPN with the API's
 * certificate (`http/listener.ts`). Each request's Host (`:authority`) names a VM's service
 * (`hostnames.ts`); it is resolved (`resolver.ts`), checked (`access.ts`) and forwarded to that
 * VM's public IPv6 and the service's port, nowhere else: over HTTP/1.1 (`forward-http1.ts`),
 * HTTP/2 cleartext (`forward-h2c.ts`) or as a spliced upgrade (`upgrade.ts`). Its own answers
 * are small pages (`pages.ts`).
 * @module
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { createProtocolServers, listen } from '../http/listener.js';
import type { VmEvents } from '../services/vm-events.js';
import type { Store } from '../store/index.js';
import { AccessCheck } from './access.js';
import { H2cForwarder } from './forward-h2c.js';
import { Http1Forwarder } from './forward-http1.js';
import { requestHeaders } from './headers.js';
import { parseServiceHost, type ProxyAddress, type ServiceHost } from './hostnames.js';
import { sendError, writeRawError, type ProxyError } from './pages.js';
import type { Backend, Resolution } from './resolver.js';
import { BackendResolver } from './resolver.js';
import { DEFAULT_TIMEOUTS, hasBody, type ProxyTimeouts } from './timeouts.js';
import { forwardUpgrade } from './upgrade.js';

/** Options of `startServiceProxy`. */
export interface ServiceProxyOptions {
  store: Store;
  /** VM changes (status, services) drop cached lookups. */
  events: VmEvents;
  logger: Logger;
  host: string;
  /** 0 = any free port. */
  port: number;
  /** Hostnames are `<name>--<vm id hex>.proxy.<domain>`. */
  domain: string;
  /** The API's certificate: the proxy then speaks TLS (h2 or HTTP/1.1 by ALPN). */
  tls?: { cert: string | Buffer; key: string | Buffer } | undefined;
  /** Backend time limits (default `DEFAULT_TIMEOUTS`: 10 s to connect, 120 s to answer). */
  timeouts?: Partial<ProxyTimeouts> | undefined;
}

/** A listening proxy. */
export interface ServiceProxy {
  /** Scheme, domain and port, for service URLs. */
  readonly address: ProxyAddress;
  /** Lets in-flight requests finish (up to `graceMs`), then drops the rest. */
  close(graceMs: number): Promise<void>;
  destroy(): void;
}

type ClientRequest = http.IncomingMessage | http2.Http2ServerRequest;
type ClientResponse = http.ServerResponse | http2.Http2ServerResponse;

function hostOf(req: ClientRequest): string | undefined {
  const h = req.headers as Record<string, string | string[] | undefined>;
  const v = h[':authority'] ?? h.host;
  return Array.isArray(v) ? v[0] : v;
}

const UNKNOWN_HOST = (host: string | undefined, domain: string): ProxyError => ({
  status: 404,
  code: 'unknown_host',
  message:
    `${host ? `"${host}" is` : 'A request without a Host header is'} not a service hostname here. ` +
    `Service URLs look like http://<service>--<vm id without hyphens>.proxy.${domain}/.`,
});

const BAD_TARGET: ProxyError = {
  status: 400,
  code: 'bad_request_target',
  message: 'The proxy takes origin-form request targets only (a path starting with "/").',
};

/** Starts the proxy; see the module comment. */
export async function startServiceProxy(opts: ServiceProxyOptions): Promise<ServiceProxy> {
  const { logger, domain } = opts;
  const resolver = new BackendResolver(opts.store, opts.events);
  const access = new AccessCheck(opts.store);
  const timeouts: ProxyTimeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  const h1 = new Http1Forwarder(timeouts);
  const h2c = new H2cForwarder(timeouts);
  const proto = opts.tls ? 'https' : 'http';

  /** Resolves and authorises a request, then calls `go` (synchronously when cached and public). */
  const admit = (
    req: ClientRequest,
    host: ServiceHost,
    fail: (err: ProxyError) => void,
    go: (backend: Backend) => void,
  ): void => {
    const pass = (r: Resolution): void => {
      if ('error' in r) return fail(r.error);
      const backend = r.backend;
      if (backend.auth === 'public') return go(backend);
      access.check(backend, req.headers).then(
        (refused) => (refused ? fail(refused) : go(backend)),
        (err: unknown) => {
          logger.error({ err }, 'proxy: credential check failed');
          fail({
            status: 502,
            code: 'proxy_failed',
            message: 'The proxy could not check the credentials.',
          });
        },
      );
    };
    const cached = resolver.cached(host);
    if (cached) return pass(cached);
    resolver.resolve(host).then(pass, (err: unknown) => {
      logger.error({ err }, 'proxy: service lookup failed');
      fail({
        status: 502,
        code: 'proxy_failed',
        message: 'The proxy could not look the service up.',
      });
    });
  };

  const onRequest = (req: ClientRequest, res: ClientResponse): void => {
    const hostHeader = hostOf(req);
    const host = parseServiceHost(hostHeader, domain);
    if (!host) return sendError(req, res, UNKNOWN_HOST(hostHeader, domain));
    const path = req.url ?? '';
    if (!path.startsWith('/')) return sendError(req, res, BAD_TARGET);
    const isH2 = req.httpVersionMajor === 2;
    const withBody = isH2
      ? !(req as http2.Http2ServerRequest).stream.endAfterHeaders
      : hasBody(req.headers);
    admit(
      req,
      host,
      (err) => sendError(req, res, err),
      (backend) => {
        const headers = requestHeaders(req.headers, {
          host: hostHeader!,
          proto,
          clientAddress: req.socket?.remoteAddress,
          stripCredentials: backend.auth !== 'public',
          keepTeTrailers: backend.h2c,
        });
        if (backend.h2c) {
          h2c.forward(req, res, backend, headers, path, hostHeader!, withBody);
        } else {
          headers.host = hostHeader;
          h1.forward(req, res, backend, headers, path, withBody);
        }
      },
    );
  };

  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', () => socket.destroy());
    const hostHeader = hostOf(req);
    const accept = req.headers.accept;
    const host = parseServiceHost(hostHeader, domain);
    if (!host) return writeRawError(socket, UNKNOWN_HOST(hostHeader, domain), accept);
    const path = req.url ?? '';
    if (!path.startsWith('/')) return writeRawError(socket, BAD_TARGET, accept);
    admit(
      req,
      host,
      (err) => writeRawError(socket, err, accept),
      (backend) => {
        if (backend.h2c) {
          writeRawError(
            socket,
            {
              status: 502,
              code: 'upgrade_unsupported',
              message:
                'This service speaks HTTP/2 (h2c); upgrades (WebSocket) go to HTTP/1.1 services only.',
            },
            accept,
          );
          return;
        }
        const headers = requestHeaders(req.headers, {
          host: hostHeader!,
          proto,
          clientAddress: req.socket.remoteAddress,
          stripCredentials: backend.auth !== 'public',
          upgrade: true,
        });
        forwardUpgrade(req, socket, head, backend, headers, path, hostHeader!, timeouts.connectMs);
      },
    );
  };

  const servers = createProtocolServers(onRequest);
  // Streaming uploads may take as long as they take; idle keep-alive sockets still time out.
  servers.h1.requestTimeout = 0;
  servers.h1.on('upgrade', onUpgrade);
  let listener;
  try {
    listener = await listen(servers, {
      host: opts.host,
      port: opts.port,
      tls: opts.tls,
      logger,
    });
  } catch (err) {
    resolver.close();
    throw err;
  }
  const address: ProxyAddress = { scheme: proto, domain, port: listener.port };
  const shut = (): void => {
    resolver.close();
    h1.close();
    h2c.close();
  };
  return {
    address,
    async close(graceMs: number) {
      await listener.close(graceMs);
      shut();
    },
    destroy() {
      listener.destroy();
      shut();
    },
  };
}
