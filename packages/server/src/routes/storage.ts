/**
 * The storage endpoints behind presigned URLs (contract §6.6): `PUT`, `GET` and `HEAD`
 * `/storage/<object>?exp=…&max=…&sig=…`. No API key; the signed URL is the credential. This is a
 * plain Node handler, not a Fastify route, so request bodies stream straight to disk instead of
 * going through the JSON body parser. It serves the API listener (in front of Fastify, see
 * `app.ts`) and the guest-facing storage listener (`storage-listener.ts`).
 *
 * Refusals (403, 404 for a deleted VM's URL, 413, 429) are answered in the API's error shape even
 * in the middle of an upload; an upload whose client went away is no error of ours and is logged
 * at debug level only.
 * @module
 */
import fs from 'node:fs';
import http from 'node:http';
import type http2 from 'node:http2';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { ApiError, retryHint } from '../errors.js';
import { toHttpError } from '../http/error-mapping.js';
import { requestIdOf } from '../http/request-id.js';
import { UploadAbandoned, type FileService } from '../services/files.js';

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

/** Handles one storage request; `req.url` must start with `/storage/`. */
export function handleStorage(files: FileService, logger: Logger, req: Req, res: Res): void {
  const reqId = requestIdOf(req.headers);
  res.setHeader('x-request-id', reqId);
  serve(files, req, res).catch((err: unknown) => {
    const url = req.url?.split('?')[0];
    if (err instanceof UploadAbandoned) {
      logger.debug({ reqId, url }, 'storage upload abandoned by the client');
      res.destroy();
      return;
    }
    const apiError = toHttpError(err);
    if (!apiError) logger.error({ reqId, url, err }, 'storage request failed');
    else logger.info({ reqId, url, status: apiError.statusCode }, apiError.message);
    fail(req, res, apiError ?? new ApiError('internal', 'storage request failed'), reqId);
  });
}

async function serve(files: FileService, req: Req, res: Res): Promise<void> {
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD' && method !== 'PUT') {
    const body = JSON.stringify({
      error: `${method} is not supported on storage URLs (GET, HEAD, PUT)`,
      code: 'bad_request',
    });
    res.writeHead(405, { allow: 'GET, HEAD, PUT', 'content-type': 'application/json' });
    res.end(body);
    return;
  }
  const grant = files.verify(req.url ?? '');
  await files.authorize(grant);
  if (method === 'PUT') {
    const length = req.headers['content-length'];
    const declared = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
    const bytes = await files.store(grant, req as Readable, declared);
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify({ bytes }));
    return;
  }
  const obj = await files.stat(grant);
  if (!obj) throw new ApiError('not_found', 'nothing has been uploaded to this URL');
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': String(obj.size),
    'cache-control': 'no-store',
  });
  if (method === 'HEAD') {
    res.end();
    return;
  }
  // pipeline, not pipe: a client that leaves mid-download must close the file too.
  await pipeline(fs.createReadStream(obj.file), res as NodeJS.WritableStream).catch(() => {
    res.destroy();
  });
}

function fail(req: Req, res: Res, err: ApiError, requestId: string): void {
  const status = err.statusCode;
  const body = JSON.stringify({ ...err.toBody(), requestId });
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const h2 = req.httpVersionMajor === 2;
  // An unread request body (a refused PUT): close the connection instead of draining gigabytes.
  const unread = req.method === 'PUT' && !req.readableEnded;
  const retry = retryHint(status, req.method ?? 'GET', err.shouldRetry);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    ...(retry !== undefined ? { 'x-should-retry': String(retry) } : {}),
    ...(unread && !h2 ? { connection: 'close' } : {}),
  });
  res.end(body, () => {
    if (unread) setTimeout(() => req.destroy(), 100).unref();
  });
}

/** A running guest-facing storage listener. */
export interface StorageListener {
  port: number;
  /** `http://<first host>:<port>`, the base of presigned URLs. */
  baseUrl: string;
  close(): Promise<void>;
}

/**
 * Serves only the storage endpoints (HTTP/1.1) on `hosts` (the VM bridge's gateway addresses),
 * all on one port (`port` 0 = pick one). VMs reach it through their default gateway; the API port
 * stays closed to them. Everything that is not a storage URL gets 404.
 */
export async function startStorageListener(
  files: FileService,
  logger: Logger,
  hosts: readonly string[],
  port: number,
): Promise<StorageListener> {
  const servers: http.Server[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            s.closeAllConnections();
          }),
      ),
    );
  };
  let bound = port;
  try {
    for (const host of hosts) {
      const server = http.createServer({ keepAliveTimeout: 10_000 }, (req, res) => {
        if ((req.url ?? '').startsWith('/storage/')) return handleStorage(files, logger, req, res);
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'not found', code: 'not_found' }));
      });
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port: bound }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      bound = (server.address() as { port: number }).port;
    }
  } catch (err) {
    await close();
    throw err;
  }
  const first = hosts[0] ?? '127.0.0.1';
  return {
    port: bound,
    baseUrl: `http://${first.includes(':') ? `[${first}]` : first}:${bound}`,
    close,
  };
}
