/**
 * Store rows for tests and benches: a valid VM record (a `c1m2` in `provisioning`, a new id, no
 * TTL, services or volumes), with whatever the caller overrides.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { VmRecord } from '../domain/index.js';

export function vmRecord(over: Partial<VmRecord> & Pick<VmRecord, 'orgId'>): VmRecord {
  const now = new Date().toISOString();
  return {
    id: randomUUID(),
    name: 'vm',
    machine: 'c1m2',
    cpu: 1,
    memoryMiB: 2048,
    diskGiB: 10,
    status: 'provisioning',
    error: null,
    sourceSnapshotId: null,
    sourceName: '',
    firewall: { mode: 'restricted', ingress: [] },
    metadata: {},
    publicIpv6: null,
    createdAt: now,
    updatedAt: now,
    deletedAt: null,
    ...over,
  };
}
