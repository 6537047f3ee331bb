/**
 * `/internal/v1/snapshots/…`: the internal channel snapshot mobility pulls over (multi-host,
 * `cluster/snapshot-mobility.ts`). Registered only in cluster mode with mobility, in the scope
 * of the internal channel (`app.ts`), whose guard (`cluster/internal-auth.ts`) checks the
 * cluster token first; hidden from the OpenAPI document; no API key.
 *
 *   GET    …/{id}/manifest?haveGoldens=a,b   the files a restore needs, with sizes and SHA-256
 *   GET    …/{id}/files/{name}[?encoding=zero-runs]  one file of the manifest, streamed
 *   POST   …/{id}/pull                       pull the snapshot here, in the background (202)
 *   DELETE …/{id}                            drop this host's copy (the snapshot was deleted)
 * @module
 */
import { encodeZeroRuns, type Runtime } from '@fastvm/runtime';
import type { App, AppServices } from '../app.js';
import { ENCODING_HEADER, type ClusterSnapshotMobility } from '../cluster/snapshot-mobility.js';
import { ApiError } from '../errors.js';
import { fromRuntimeError, isRuntimeError } from '../services/runtime-errors.js';

export interface InternalSnapshotDeps {
  readonly runtime: Runtime;
  readonly mobility: ClusterSnapshotMobility;
}

const SNAPSHOT_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/;
const config = { hidden: true } as const;

/** Under `INTERNAL_PREFIX`, with `services.internalSnapshots` (absent: nothing registered). */
export default async function internalSnapshotRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const deps = opts.services.internalSnapshots;
  if (!deps) return;
  const { runtime, mobility } = deps;

  const idOf = (params: unknown): string => {
    const id = (params as { id?: string }).id ?? '';
    if (!SNAPSHOT_ID.test(id))
      throw new ApiError('bad_request', 'invalid snapshot id', { field: 'id' });
    return id;
  };
  const mapped = (err: unknown, id: string): unknown => {
    if (isRuntimeError(err) && (err.code === 'snapshot_not_found' || err.code === 'not_found')) {
      return new ApiError('not_found', err.message, { snapshotId: id });
    }
    return isRuntimeError(err) ? fromRuntimeError(err, 'snapshot export', { snapshotId: id }) : err;
  };

  app.get('/snapshots/:id/manifest', { config }, async (request) => {
    const id = idOf(request.params);
    const have = String((request.query as { haveGoldens?: string }).haveGoldens ?? '')
      .split(',')
      .filter((g) => SNAPSHOT_ID.test(g));
    try {
      return await runtime.exportSnapshot!(id, { haveGoldens: have });
    } catch (err) {
      throw mapped(err, id);
    }
  });

  app.get('/snapshots/:id/files/:name', { config }, async (request, reply) => {
    const id = idOf(request.params);
    const name = (request.params as { name?: string }).name ?? '';
    if (!FILE_NAME.test(name))
      throw new ApiError('bad_request', 'invalid file name', { field: 'name' });
    let stream;
    try {
      stream = await runtime.openSnapshotFile!(id, name);
    } catch (err) {
      throw mapped(err, id);
    }
    reply.header('content-type', 'application/octet-stream');
    // Memory files are mostly holes: zero runs travel as their length (`zero-runs.ts`).
    if ((request.query as { encoding?: string }).encoding === 'zero-runs') {
      reply.header(ENCODING_HEADER, 'zero-runs');
      const encoded = encodeZeroRuns();
      stream.on('error', (err) => encoded.destroy(err));
      return reply.send(stream.pipe(encoded));
    }
    return reply.send(stream);
  });

  app.post('/snapshots/:id/pull', { config }, async (request, reply) => {
    const id = idOf(request.params);
    mobility.pullInBackground(id);
    return reply.code(202).send({ id, pulling: true });
  });

  app.delete('/snapshots/:id', { config }, async (request, reply) => {
    const id = idOf(request.params);
    await mobility.dropLocal(id);
    return reply.code(204).send();
  });
}
