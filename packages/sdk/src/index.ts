/**
 * FastVM TypeScript SDK: launch, snapshot, restore and run commands in microVMs over one
 * multiplexed HTTP/2 session.
 *
 * @example
 * ```ts
 * import { FastVM } from 'fastvm';
 *
 * await using client = new FastVM();
 * const vm = await client.launch({ machine: 'c1m2' });
 * const result = await client.run(vm, 'echo hello');
 * ```
 *
 * @module
 */
export {
  FastVM,
  DEFAULT_BASE_URL,
  DEFAULT_MAX_RETRIES,
  DEFAULT_TIMEOUT_MS,
  type ClientOptions,
  type ConsoleOptions,
  type ForkOptions,
  type LaunchOptions,
  type RequestOptions,
  type RestoreOptions,
  type StreamOptions,
  type AttachOptions,
  type DetachedExecOptions,
  type TransferOptions,
  type RunOptions,
  type SnapshotOptions,
  type BuildOptions,
  type ImportImageOptions,
  type WatchOptions,
} from './client.js';
export type { ConnectionStats, Protocol, TLSOptions } from './core/transport.js';
export { ConsoleSession, type ConsoleEvents, type ConsoleExit } from './console.js';
export {
  FastVMError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  QuotaExceededError,
  RateLimitError,
  InternalServerError,
  ConnectionError,
  TimeoutError,
  AbortError,
  VMLaunchError,
  VMNotReadyError,
  SnapshotError,
  SnapshotNotReadyError,
  FileTransferError,
  BuildError,
  type Headers,
} from './core/errors.js';
export type {
  BuildEvent,
  BuildStreamItem,
  SnapshotImport,
  CommandResult,
  ExecEvent,
  ExecSession,
  DnsPolicy,
  FirewallDirectionV2,
  FirewallPolicy,
  FirewallPolicyV2,
  FirewallRule,
  FirewallRuleV2,
  Lineage,
  LineageNode,
  MachineType,
  OrgQuotaUsage,
  OrgQuotaValues,
  PatchFirewallPolicy,
  Pricing,
  PricingTier,
  Service,
  ServiceAuth,
  ServiceOptions,
  Snapshot,
  SnapshotRef,
  SshKey,
  SnapshotStatus,
  TransferProgress,
  TransferResult,
  VM,
  VMTtl,
  VMRef,
  VMStatus,
  Volume,
  VolumeAttachment,
  VolumeMount,
} from './types.js';
export { VERSION } from './version.js';
