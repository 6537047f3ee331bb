/**
 * Dependencies and settings shared by the services.
 * @module
 */
import type { Runtime } from '@fastvm/runtime';
import type { SnapshotMobility } from '../cluster/seams.js';
import type { Logger } from 'pino';
import type { Store } from '../store/index.js';
import type { NetworkManager } from './network.js';
import type { QuotaService } from './quota.js';
import type { TaskTracker } from './tasks.js';
import type { VmEvents } from './vm-events.js';
import type { Metrics } from './metrics.js';
import type { VolumeService } from './volume-service.js';

/** Tunables of the services (defaults in `startServer`). */
export interface ServiceSettings {
  /** How long `POST /v1/vms` waits for the runtime before answering 202 `provisioning`. */
  launchWaitMs: number;
  /** Largest `diskGiB` accepted at launch. */
  maxDiskGiB: number;
  /** Exec limit when the request gives no `timeoutSec`. */
  defaultExecTimeoutSec: number;
  /** Bytes kept per output stream in buffered exec (contract: 4 MiB). */
  execCapBytes: number;
}

/**
 * Everything a service needs, built once by `startServer` before the services, and never
 * changed afterwards.
 */
export interface ServiceContext {
  store: Store;
  runtime: Runtime;
  network: NetworkManager;
  logger: Logger;
  tasks: TaskTracker;
  settings: ServiceSettings;
  /** Limits, usage and the quota reservation every launch, restore, resume and snapshot uses. */
  quotas: QuotaService;
  /** Services publish every VM whose status or TTL they changed (the TTL scheduler listens). */
  events: VmEvents;
  /** Operation counters and latencies (`/metrics`); none in tests that build a context by hand. */
  metrics?: Metrics;
  /** Volumes: launch/restore attachments and the detach before a VM is destroyed. */
  volumes?: VolumeService;
  /** File-transfer staging; a deleted VM's objects are dropped (see `files.ts`). */
  staging?: { dropVm(vmId: string): Promise<void> };
  /**
   * Multi-host snapshot mobility (cluster mode only): restores and forks pull a snapshot this
   * host lacks; ready snapshots are recorded (and replicated); deletes remove every copy.
   */
  mobility?: SnapshotMobility;
}
