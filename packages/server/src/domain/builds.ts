/**
 * Builds and snapshot imports (`services/builds/`): one record for both APIs (`kind`), kept as a
 * JSON document beside a few indexed columns. Statuses are the imports' (§4.7); `/v1/builds`
 * maps them (`succeeded` → `completed`, `cancelled` → `failed`).
 * @module
 */
import type { MachineType } from '@fastvm/runtime';

export type BuildKind = 'build' | 'import';
export type BuildStatus = 'pending' | 'claimed' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export const BUILD_TERMINAL: readonly BuildStatus[] = ['succeeded', 'failed', 'cancelled'];

export type BuildPhase =
  | 'preparing'
  | 'network'
  | 'pull'
  | 'fetch_context'
  | 'build'
  | 'export'
  | 'saving'
  | 'warming'
  | 'done';
export type BuildEventStatus = 'started' | 'completed' | 'failed' | 'skipped' | 'cancelled';

export interface BuildEvent {
  phase: BuildPhase;
  status: BuildEventStatus;
  timestampMs: number;
  message?: string;
}

/** The import's `source` without secrets (the contract's SourceView). */
export interface BuildSourceView {
  type: 'image' | 'dockerfile';
  image?: string;
  platform?: string;
  dockerfilePath?: string;
  target?: string;
  buildArgs?: Record<string, string>;
  registryUsername?: string;
  registryHost?: string;
  contextSizeBytes?: number;
}

/** What the finished snapshot records of the image config (CMD, ENTRYPOINT, …). */
export interface BuiltImageConfig {
  env: Record<string, string>;
  cmd?: string[];
  entrypoint?: string[];
  workdir?: string;
  user?: string;
  exposedPorts?: number[];
  labels?: Record<string, string>;
}

export interface BuildRecord {
  id: string;
  orgId: string;
  kind: BuildKind;
  status: BuildStatus;
  name: string;
  machine: MachineType;
  cpu: number;
  memoryMiB: number;
  diskGiB: number;
  source: BuildSourceView;
  /** `/v1/builds`: the `imageRef` given (or the Dockerfile's first FROM). */
  imageRef?: string;
  /** The Dockerfile's text when given inline (`/v1/builds` `dockerfileContent`). */
  dockerfileContent?: string;
  /** The context archive under the builds directory, and its format. */
  contextFile?: string;
  contextFormat?: 'tar' | 'zip';
  events: BuildEvent[];
  progress?: string;
  error?: string;
  snapshotId?: string;
  config?: BuiltImageConfig;
  /** Steps run and steps restored from the step cache. */
  steps?: { total: number; cached: number; ran: number };
  /** Step snapshots being taken (not yet in the cache): removed if the build dies. */
  pendingSnapshots?: string[];
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
  finishedAt?: string;
}

/** One step-cache entry: the snapshot after a step, by key (per org). */
export interface BuildCacheEntry {
  orgId: string;
  key: string;
  snapshotId: string;
  createdAt: string;
  lastUsedAt: string;
}
