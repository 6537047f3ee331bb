/**
 * Builds and snapshot imports (contract §4.7, §4.8): thin routes over `BuildService`
 * (`services/builds/build-service.ts`). Extra: `GET …/{id}/logs?offset=N` serves the build
 * output (RUN output, step headers, cache hits) from byte `offset`.
 * @module
 */
import { z } from 'zod';
import type { App, AppServices } from '../app.js';
import type { BuildRecord } from '../domain/index.js';
import { ApiError } from '../errors.js';
import { DeleteResponse, ErrorBody, FilePresignResponse } from '../schemas.js';
import { requireAuth } from './util.js';

const Params = z.object({ id: z.string() });

const StringMap = z.record(z.string(), z.string());

const ImportSource = z.object({
  type: z.enum(['image', 'dockerfile']),
  image: z.string().min(1).max(1024).optional(),
  platform: z.string().max(64).optional(),
  contextRef: z.string().min(1).max(256).optional(),
  dockerfilePath: z.string().max(1024).optional(),
  target: z.string().max(256).optional(),
  buildArgs: StringMap.optional(),
  registryUsername: z.string().max(1024).optional(),
  registryPassword: z.string().max(8192).optional(),
  registryHost: z.string().max(512).optional(),
});

const ImportBody = z
  .object({
    source: ImportSource,
    name: z.string().max(1024).optional(),
    machineType: z.string().optional(),
    diskGiB: z.number().int().min(1).optional(),
  })
  .meta({ id: 'SnapshotImportCreateRequest' });

const BuildEvent = z.object({
  phase: z.string(),
  status: z.string(),
  timestampMs: z.number().int(),
  message: z.string().optional(),
});

const SourceView = z.object({
  type: z.string(),
  image: z.string().optional(),
  platform: z.string().optional(),
  dockerfilePath: z.string().optional(),
  target: z.string().optional(),
  buildArgs: StringMap.optional(),
  registryUsername: z.string().optional(),
  registryHost: z.string().optional(),
  contextSizeBytes: z.number().int().optional(),
});

const Steps = z.object({
  total: z.number().int(),
  cached: z.number().int(),
  ran: z.number().int(),
});

const ImportResponse = z
  .object({
    id: z.string(),
    status: z.string(),
    source: SourceView,
    createdAt: z.string(),
    name: z.string().optional(),
    machineName: z.string().optional(),
    cpu: z.number().int().optional(),
    memoryMiB: z.number().int().optional(),
    diskGiB: z.number().int().optional(),
    snapshotId: z.string().optional(),
    error: z.string().optional(),
    progress: z.string().optional(),
    events: z.array(BuildEvent).optional(),
    steps: Steps.optional(),
    startedAt: z.string().optional(),
    finishedAt: z.string().optional(),
    updatedAt: z.string().optional(),
  })
  .meta({ id: 'SnapshotImportResponse' });

const BuildBody = z
  .object({
    imageRef: z.string().max(1024).optional(),
    dockerfileContent: z
      .string()
      .max(1024 * 1024)
      .optional(),
    contextDownloadUrl: z.string().max(8192).optional(),
    machineType: z.string().optional(),
    diskGiB: z.number().int().min(1).optional(),
    name: z.string().max(1024).optional(),
  })
  .meta({ id: 'BuildCreateRequest' });

const BuildResponse = z
  .object({
    id: z.string(),
    status: z.string(),
    imageRef: z.string(),
    createdAt: z.string(),
    name: z.string().optional(),
    progress: z.string().optional(),
    snapshotId: z.string().optional(),
    error: z.string().optional(),
    events: z.array(BuildEvent).optional(),
    steps: Steps.optional(),
  })
  .meta({ id: 'BuildResponse' });

const ContextPresignBody = z
  .object({ sizeBytes: z.number().int().min(0).optional() })
  .nullish()
  .meta({ id: 'ContextPresignRequest' });

const ContextPresignResponse = z
  .object({
    uploadUrl: z.string(),
    contextRef: z.string(),
    expiresInSec: z.number().int(),
    maxUploadBytes: z.number().int(),
  })
  .meta({ id: 'ContextPresignResponse' });

const LogsQuery = z.object({ offset: z.coerce.number().int().min(0).optional() });
const LogsResponse = z
  .object({
    data: z.string(),
    offset: z.number().int(),
    nextOffset: z.number().int(),
    done: z.boolean(),
  })
  .meta({ id: 'BuildLogs' });

/** §4.7 SnapshotImportResponse. */
export function presentImport(r: BuildRecord): z.infer<typeof ImportResponse> {
  return {
    id: r.id,
    status: r.status,
    source: { ...r.source },
    createdAt: r.createdAt,
    name: r.name,
    machineName: r.machine,
    cpu: r.cpu,
    memoryMiB: r.memoryMiB,
    diskGiB: r.diskGiB,
    ...(r.snapshotId !== undefined && r.status === 'succeeded' ? { snapshotId: r.snapshotId } : {}),
    ...(r.error !== undefined && r.status !== 'succeeded' ? { error: r.error } : {}),
    ...(r.progress !== undefined && !isTerminal(r) ? { progress: r.progress } : {}),
    events: r.events.map((e) => ({ ...e })),
    ...(r.steps ? { steps: { ...r.steps } } : {}),
    ...(r.startedAt ? { startedAt: r.startedAt } : {}),
    ...(r.finishedAt ? { finishedAt: r.finishedAt } : {}),
    updatedAt: r.updatedAt,
  };
}

/** §4.8 BuildResponse: `completed` for succeeded, `failed` for failed or cancelled. */
export function presentBuild(r: BuildRecord): z.infer<typeof BuildResponse> {
  const status =
    r.status === 'succeeded'
      ? 'completed'
      : r.status === 'failed' || r.status === 'cancelled'
        ? 'failed'
        : r.status === 'pending'
          ? 'pending'
          : 'running';
  return {
    id: r.id,
    status,
    imageRef: r.imageRef ?? r.source.image ?? '',
    createdAt: r.createdAt,
    name: r.name,
    ...(!isTerminal(r) ? { progress: r.progress ?? r.status } : {}),
    ...(r.snapshotId !== undefined && r.status === 'succeeded' ? { snapshotId: r.snapshotId } : {}),
    ...(status === 'failed' ? { error: r.error ?? 'the build failed' } : {}),
    events: r.events.map((e) => ({ ...e })),
    ...(r.steps ? { steps: { ...r.steps } } : {}),
  };
}

function isTerminal(r: BuildRecord): boolean {
  return r.status === 'succeeded' || r.status === 'failed' || r.status === 'cancelled';
}

export default async function buildRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const builds = () => {
    const b = opts.services.builds;
    if (!b) throw new ApiError('not_implemented', 'builds are not enabled on this server');
    return b;
  };
  const base = (request: { protocol: string; host: string }): string =>
    `${request.protocol}://${request.host}`;
  const importTags = ['snapshot imports'];
  const buildTags = ['builds'];

  // ---- snapshot imports (§4.7) ----

  app.post(
    '/v1/snapshot-imports/context-presign',
    {
      config: {
        summary: 'Presigned upload URL for a ZIP build context',
        operationId: 'presignImportContext',
        tags: importTags,
      },
      schema: {
        body: ContextPresignBody,
        response: { 200: ContextPresignResponse, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const p = builds().presignContext(orgId, base(request), request.body?.sizeBytes);
      return {
        uploadUrl: p.uploadUrl,
        contextRef: p.object,
        expiresInSec: p.expiresInSec,
        maxUploadBytes: p.maxUploadBytes,
      };
    },
  );

  app.post(
    '/v1/snapshot-imports',
    {
      config: {
        summary: 'Import a snapshot from an image or a Dockerfile',
        operationId: 'createSnapshotImport',
        tags: importTags,
      },
      schema: { body: ImportBody, response: { 202: ImportResponse, default: ErrorBody } },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const rec = await builds().createImport(orgId, request.body);
      return reply.code(202).send(presentImport(rec));
    },
  );

  app.get(
    '/v1/snapshot-imports',
    {
      config: {
        summary: 'List snapshot imports, newest first',
        operationId: 'listSnapshotImports',
        tags: importTags,
      },
      schema: { response: { 200: ImportResponse.array(), default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return (await builds().list(orgId, 'import')).map(presentImport);
    },
  );

  app.get(
    '/v1/snapshot-imports/:id',
    {
      config: {
        summary: 'Get a snapshot import',
        operationId: 'getSnapshotImport',
        tags: importTags,
      },
      schema: { params: Params, response: { 200: ImportResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentImport(await builds().get(orgId, request.params.id, 'import'));
    },
  );

  app.get(
    '/v1/snapshot-imports/:id/logs',
    {
      config: {
        summary: 'Build output of a snapshot import',
        operationId: 'getSnapshotImportLogs',
        tags: importTags,
      },
      schema: {
        params: Params,
        querystring: LogsQuery,
        response: { 200: LogsResponse, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return builds().logs(orgId, request.params.id, 'import', request.query.offset ?? 0);
    },
  );

  app.post(
    '/v1/snapshot-imports/:id/cancel',
    {
      config: {
        summary: 'Cancel a snapshot import (idempotent)',
        operationId: 'cancelSnapshotImport',
        tags: importTags,
      },
      schema: { params: Params, response: { 200: ImportResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentImport(await builds().cancel(orgId, request.params.id, 'import'));
    },
  );

  app.delete(
    '/v1/snapshot-imports/:id',
    {
      config: {
        summary: 'Delete a finished snapshot import and its snapshot',
        operationId: 'deleteSnapshotImport',
        tags: importTags,
      },
      schema: { params: Params, response: { 200: DeleteResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { id } = await builds().delete(orgId, request.params.id, 'import');
      return { id, deleted: true };
    },
  );

  // ---- builds (§4.8) ----

  app.post(
    '/v1/build-contexts/presign',
    {
      config: {
        summary: 'Presigned upload URL for a tar.gz build context',
        operationId: 'presignBuildContext',
        tags: buildTags,
      },
      schema: { response: { 200: FilePresignResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const p = builds().presignContext(orgId, base(request));
      return {
        uploadUrl: p.uploadUrl,
        downloadUrl: p.downloadUrl,
        expiresInSec: p.expiresInSec,
        maxUploadBytes: p.maxUploadBytes,
      };
    },
  );

  app.post(
    '/v1/builds',
    {
      config: {
        summary: 'Build a snapshot from a Dockerfile or an image',
        operationId: 'createBuild',
        tags: buildTags,
      },
      schema: { body: BuildBody, response: { 202: BuildResponse, default: ErrorBody } },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const rec = await builds().createBuild(orgId, request.body);
      return reply.code(202).send(presentBuild(rec));
    },
  );

  app.get(
    '/v1/builds/:id',
    {
      config: { summary: 'Get a build', operationId: 'getBuild', tags: buildTags },
      schema: { params: Params, response: { 200: BuildResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentBuild(await builds().get(orgId, request.params.id, 'build'));
    },
  );

  app.get(
    '/v1/builds/:id/logs',
    {
      config: { summary: 'Build output', operationId: 'getBuildLogs', tags: buildTags },
      schema: {
        params: Params,
        querystring: LogsQuery,
        response: { 200: LogsResponse, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return builds().logs(orgId, request.params.id, 'build', request.query.offset ?? 0);
    },
  );

  app.post(
    '/v1/builds/:id/cancel',
    {
      config: {
        summary: 'Cancel a build (idempotent)',
        operationId: 'cancelBuild',
        tags: buildTags,
      },
      schema: { params: Params, response: { 200: BuildResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentBuild(await builds().cancel(orgId, request.params.id, 'build'));
    },
  );
}
