/**
 * The console: `POST /v1/vms/{id}/console-token` (API key) and the WebSocket at the
 * `websocketPath` it returns, `GET /v1/vms/{id}/console/ws?session=<token>`, authenticated only
 * by the token (contract §1.2, §4.2.9, §5). The protocol is described in `services/console.ts`.
 * @module
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { App, AppServices } from '../app.js';
import { ApiError, badRequest } from '../errors.js';
import { writeRawError } from '../http/raw-response.js';
import { ErrorBody, IdParams } from '../schemas.js';
import { parseSize, type ConsoleGrant, type InitialSize } from '../services/console.js';
import { requireAuth } from './util.js';

const ConsoleToken = z
  .object({
    token: z.string().describe('Single-use capability; pass it as `?session=` on the WebSocket.'),
    expiresInSec: z.number().int().describe('Seconds until the token expires unused.'),
    websocketPath: z
      .string()
      .describe('Path of the console WebSocket, relative to the API base URL.'),
  })
  .meta({ id: 'ConsoleToken' });

const ConsoleQuery = z.looseObject({
  session: z.string().optional().describe('The console token.'),
  rows: z.string().optional().describe('Initial terminal rows (with cols: start at once).'),
  cols: z.string().optional().describe('Initial terminal columns.'),
});

/** A Sec-WebSocket-Key: 16 bytes in base64 (RFC 6455 §4.2.1). */
const WS_KEY_RE = /^[+/0-9A-Za-z]{22}==$/;
/** An HTTP token (RFC 9110 §5.6.2), as a subprotocol name must be. */
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Why an upgrade request is not a WebSocket handshake `ws` would complete (the checks of its
 * `handleUpgrade`), or undefined. Checked before the console token is used up, so the refusal
 * is a JSON answer and the token stays good for a correct handshake.
 */
function handshakeError(headers: IncomingHttpHeaders): ApiError | undefined {
  if (headers.upgrade?.toLowerCase() !== 'websocket') {
    return badRequest('the console upgrades to a WebSocket: send Upgrade: websocket', 'upgrade');
  }
  const key = headers['sec-websocket-key'];
  if (key === undefined || !WS_KEY_RE.test(key)) {
    return badRequest('Sec-WebSocket-Key must be 16 bytes in base64', 'sec-websocket-key');
  }
  const version = Number(headers['sec-websocket-version']);
  if (version !== 13 && version !== 8) {
    return badRequest('unsupported WebSocket version: use 13', 'sec-websocket-version');
  }
  const protocols = headers['sec-websocket-protocol'];
  if (protocols !== undefined) {
    const names = protocols.split(',').map((p) => p.trim());
    if (names.some((p) => !TOKEN_RE.test(p)) || new Set(names).size !== names.length) {
      return badRequest(
        'Sec-WebSocket-Protocol must list distinct tokens',
        'sec-websocket-protocol',
      );
    }
  }
  return undefined;
}

export default async function consoleRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const grants = new WeakMap<object, { grant: ConsoleGrant; size: InitialSize | undefined }>();
  // `handshakeError` refuses what `ws` would; should `ws` still refuse a handshake, its answer
  // is in the API's error shape too (its own is text/html).
  app.websocketServer.on('wsClientError', (err: Error, socket) => {
    writeRawError(socket, badRequest(`WebSocket handshake refused: ${err.message}`));
  });

  app.post(
    '/v1/vms/:id/console-token',
    {
      config: {
        summary: 'Create a console token for the VM’s interactive shell WebSocket',
        operationId: 'createConsoleToken',
        tags: ['vms'],
      },
      schema: { params: IdParams, response: { 200: ConsoleToken, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return opts.services.consoles.mint(orgId, request.params.id);
    },
  );

  app.get(
    '/v1/vms/:id/console/ws',
    {
      websocket: true,
      config: { public: true, hidden: true },
      schema: { params: IdParams, querystring: ConsoleQuery },
      // Refusals are plain HTTP responses before the upgrade (401/404/409 with the JSON body).
      preHandler: async (request, reply) => {
        if (!request.ws) {
          throw new ApiError(
            'bad_request',
            'the console is a WebSocket: connect with an HTTP/1.1 upgrade',
          );
        }
        const refused = handshakeError(request.headers);
        if (refused) {
          if (refused.details.field === 'sec-websocket-version') {
            reply.header('sec-websocket-version', '13');
          }
          throw refused;
        }
        const { session, rows, cols } = request.query;
        const grant = await opts.services.consoles.redeem(session, request.params.id);
        grants.set(request, { grant, size: parseSize(rows, cols) });
      },
    },
    (socket, request) => {
      const granted = grants.get(request);
      if (!granted) {
        socket.close(1011, 'console: no session');
        return;
      }
      opts.services.consoles.attach(socket, granted.grant, granted.size, request.log as Logger);
    },
  );

  app.addHook('preClose', (done) => {
    opts.services.consoles?.closeAll();
    done();
  });
}
