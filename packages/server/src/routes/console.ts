/**
 * The console: `POST /v1/vms/{id}/console-token` (API key) and the WebSocket at the
 * `websocketPath` it returns, `GET /v1/vms/{id}/console/ws?session=<token>`, authenticated only
 * by the token (contract §1.2, §4.2.9, §5). The protocol is described in `services/console.ts`.
 * @module
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import type { App, AppServices } from '../app.js';
import { ApiError } from '../errors.js';
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

export default async function consoleRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const grants = new WeakMap<object, { grant: ConsoleGrant; size: InitialSize | undefined }>();

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
      preHandler: async (request) => {
        if (!request.ws) {
          throw new ApiError(
            'bad_request',
            'the console is a WebSocket: connect with an HTTP/1.1 upgrade',
          );
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
