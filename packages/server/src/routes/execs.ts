/**
 * `/v1/vms/{id}/execs`: exec sessions (`services/exec-sessions.ts`): list, get, attach to the
 * output from a byte offset as NDJSON (the events of contract §4.2.10), kill. Also the NDJSON
 * writer the streaming `POST /v1/vms/{id}/exec` shares.
 * @module
 */
import { PassThrough } from 'node:stream';
import type { FastifyReply } from 'fastify';
import type { App, AppServices } from '../app.js';
import {
  ErrorBody,
  ExecSession,
  ExecSessionList,
  ExecSessionParams,
  ExecStreamQuery,
  type ExecSessionView,
  IdParams,
} from '../schemas.js';
import type {
  ExecListener,
  ExecSession as Session,
  ExecSessions,
} from '../services/exec-sessions.js';
import type { PreparedExec } from '../services/vm-service.js';
import { requireAuth } from './util.js';

/** How long a kill request waits for the command to be gone before it answers. */
const KILL_WAIT_MS = 2000;

/** The wire form of a session (schema `ExecSession`). */
export function presentExecSession(s: Session): ExecSessionView {
  const exit = s.end?.type === 'exit' ? s.end : undefined;
  return {
    execId: s.id,
    vmId: s.vm.id,
    command: [...s.argv],
    status: s.status,
    exitCode: exit ? exit.exitCode : null,
    timedOut: exit?.timedOut ?? false,
    durationMs: exit ? exit.durationMs : null,
    error: s.end?.type === 'error' ? s.end.message : null,
    keepAlive: s.keepAlive,
    startedAt: s.startedAt.toISOString(),
    endedAt: s.endedAt?.toISOString() ?? null,
    expiresAt: s.expiresAt?.toISOString() ?? null,
    stdoutBytes: s.stdoutBytes,
    stderrBytes: s.stderrBytes,
    outputBytes: s.outputBytes,
    truncatedBefore: s.truncatedBefore,
  };
}

/**
 * Answers with a session's output from `fromOffset` as NDJSON, live until its end: the exit
 * event of §4.2.10 last, or, for a killed or failed session, a cut stream (as a plain streaming
 * exec does: the 200 is already sent, so the client sees a broken stream, not a made-up exit).
 * Headers: `x-exec-id`, `x-exec-from-offset` (where the output starts: `fromOffset` raised to
 * what is still kept), `x-exec-truncated-before`. Official clients ignore unknown headers.
 * Leaving never kills the command.
 */
export function sendExecStream(
  reply: FastifyReply,
  session: Session,
  fromOffset: number,
): FastifyReply {
  const { out, listener } = ndjsonWriter();
  const { from, stop } = session.follow(fromOffset, listener);
  reply.raw.once('close', stop);
  return sendNdjson(reply, out, session, from);
}

/**
 * Starts a prepared exec as a session and answers with its whole output as `sendExecStream`
 * does. Without `keepAlive` the client leaving kills the command (a plain streaming exec).
 */
export function startExecStream(
  reply: FastifyReply,
  execs: ExecSessions,
  prepared: PreparedExec,
  opts: { keepAlive: boolean },
): FastifyReply {
  const { out, listener } = ndjsonWriter();
  const session = execs.start(prepared, { keepAlive: opts.keepAlive, listener });
  reply.raw.once('close', () => {
    session.unfollow(listener);
    if (!opts.keepAlive) session.kill('client disconnected');
  });
  return sendNdjson(reply, out, session, 0);
}

/** A stream of NDJSON lines and the session listener that writes them. */
function ndjsonWriter(): { out: PassThrough; listener: ExecListener } {
  const out = new PassThrough();
  const write = (event: Record<string, unknown>): void => {
    if (!out.destroyed) out.write(JSON.stringify(event) + '\n');
  };
  const listener: ExecListener = (event) => {
    switch (event.type) {
      case 'stdout':
      case 'stderr':
        write({ t: event.type === 'stdout' ? 'o' : 'e', d: event.data.toString('base64') });
        break;
      case 'exit': {
        // Exactly one final event; `c` only when non-zero, `to` only when timed out.
        const exit: Record<string, unknown> = { t: 'x' };
        if (event.exitCode !== 0) exit.c = event.exitCode;
        if (event.timedOut) exit.to = true;
        exit.ms = event.durationMs;
        write(exit);
        out.end();
        break;
      }
      case 'error':
        out.destroy(new Error(`exec ${event.status}: ${event.message}`));
        break;
    }
  };
  return { out, listener };
}

function sendNdjson(
  reply: FastifyReply,
  out: PassThrough,
  session: Session,
  from: number,
): FastifyReply {
  return (
    reply
      .code(200)
      .header('content-type', 'application/x-ndjson')
      .header('cache-control', 'no-store')
      .header('x-exec-id', session.id)
      .header('x-exec-from-offset', String(from))
      .header('x-exec-truncated-before', String(session.truncatedBefore))
      // A stream body; response schemas describe JSON answers only.
      .send(out as never)
  );
}

export default async function execRoutes(
  app: App,
  opts: { services: AppServices & { execs: ExecSessions } },
): Promise<void> {
  const { vms, execs } = opts.services;
  const tags = ['vms'];

  app.get(
    '/v1/vms/:id/execs',
    {
      config: {
        summary: "List the VM's exec sessions (running, and ended ones for a while)",
        operationId: 'listExecs',
        tags,
      },
      schema: { params: IdParams, response: { 200: ExecSessionList, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      return execs.list(vm).map(presentExecSession);
    },
  );

  app.get(
    '/v1/vms/:id/execs/:execId',
    {
      config: { summary: 'One exec session', operationId: 'getExec', tags },
      schema: { params: ExecSessionParams, response: { 200: ExecSession, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      return presentExecSession(execs.get(vm, request.params.execId));
    },
  );

  app.get(
    '/v1/vms/:id/execs/:execId/stream',
    {
      config: {
        summary:
          'Attach to an exec session: its output from a byte offset as NDJSON, live to its end',
        operationId: 'attachExec',
        tags,
      },
      schema: {
        params: ExecSessionParams,
        querystring: ExecStreamQuery,
        response: { default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      const session = execs.get(vm, request.params.execId);
      return sendExecStream(reply, session, request.query.fromOffset ?? 0);
    },
  );

  app.delete(
    '/v1/vms/:id/execs/:execId',
    {
      config: {
        summary: 'Kill a running exec session (its process group gets SIGKILL)',
        operationId: 'killExec',
        tags,
      },
      schema: { params: ExecSessionParams, response: { 200: ExecSession, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      const session = execs.get(vm, request.params.execId);
      if (!session.end) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, KILL_WAIT_MS);
          session.follow(session.outputBytes, (event) => {
            if (event.type === 'exit' || event.type === 'error') {
              clearTimeout(timer);
              resolve();
            }
          });
          session.kill('killed by request');
        });
      }
      return presentExecSession(session);
    },
  );
}
