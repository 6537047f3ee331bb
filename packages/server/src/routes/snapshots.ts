/**
 * `/v1/snapshots`: create (blocks until ready), list, get, rename, delete. Restore is
 * `POST /v1/vms` with `snapshotId`.
 * @module
 */
import type { App, AppServices } from '../app.js';
import {
  CreateSnapshotBody,
  DeleteResponse,
  ErrorBody,
  IdParams,
  ListSnapshotsQuery,
  Snapshot,
  UpdateSnapshotBody,
} from '../schemas.js';
import { metadataFilters, presentSnapshot } from './present.js';
import { firewallShape } from './firewall-shape.js';
import { requireAuth } from './util.js';

export default async function snapshotRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const { snapshots } = opts.services;
  const tags = ['snapshots'];

  app.post(
    '/v1/snapshots',
    {
      config: { summary: 'Snapshot a running VM', operationId: 'createSnapshot', tags },
      schema: { body: CreateSnapshotBody, response: { 201: Snapshot, default: ErrorBody } },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const snap = await snapshots.create(orgId, request.body);
      return reply.code(201).send(presentSnapshot(snap, firewallShape(request)));
    },
  );

  app.get(
    '/v1/snapshots',
    {
      config: { summary: 'List snapshots', operationId: 'listSnapshots', tags },
      schema: {
        querystring: ListSnapshotsQuery,
        response: { 200: Snapshot.array(), default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const list = await snapshots.list(orgId, {
        metadata: metadataFilters(request.query as Record<string, unknown>),
      });
      return list.map((s) => presentSnapshot(s, firewallShape(request)));
    },
  );

  app.get(
    '/v1/snapshots/:id',
    {
      config: { summary: 'Get a snapshot', operationId: 'getSnapshot', tags },
      schema: { params: IdParams, response: { 200: Snapshot, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentSnapshot(await snapshots.get(orgId, request.params.id), firewallShape(request));
    },
  );

  app.patch(
    '/v1/snapshots/:id',
    {
      config: {
        summary: 'Rename a snapshot or replace its metadata',
        operationId: 'updateSnapshot',
        tags,
      },
      schema: {
        params: IdParams,
        body: UpdateSnapshotBody,
        response: { 200: Snapshot, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentSnapshot(
        await snapshots.update(orgId, request.params.id, request.body),
        firewallShape(request),
      );
    },
  );

  app.delete(
    '/v1/snapshots/:id',
    {
      config: { summary: 'Delete a snapshot', operationId: 'deleteSnapshot', tags },
      schema: { params: IdParams, response: { 200: DeleteResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { id } = await snapshots.delete(orgId, request.params.id);
      return { id, deleted: true };
    },
  );
}
