export * from './types.js';
export { QemuRuntime, createQemuRuntime } from './runtime.js';
export { PRUNE_AFTER_MS, pruneCache } from './prune.js';
export { decodeZeroRuns, encodeZeroRuns } from './zero-runs.js';
export type { PruneOptions, PruneResult } from './prune.js';
export type { QemuRuntimeOptions } from './runtime.js';
export { QmpClient, QmpCommandError, QmpConnectionError } from './qmp.js';
export type { QmpEvent, QmpState } from './qmp.js';
export { AgentClient } from './agent-client.js';
export type { AgentProcess, ProcessExit, SpawnRequest } from './agent-client.js';
export {
  createVolumeFile,
  fsck as fsckVolumeFile,
  resizeVolumeFile,
  volumeUsedBytes,
  MAX_VOLUMES_PER_VM,
} from './volumes.js';
export {
  HELPER_DIR,
  checkBaseImage,
  helperArgv,
  installGuestSupport,
  makeExt4,
} from './base-image.js';
export type { GuestSupportOptions } from './base-image.js';
export { loadGuestImage, defaultCacheDir, qemuVersion } from './qemu.js';
export type { GuestImage, Accel } from './qemu.js';
export {
  BridgeInUseError,
  DOH_ENDPOINTS,
  NetworkManager,
  checkPorts,
  normalizeCidr,
  probeNetworking,
  publicIpv6,
  tapPrefixFor,
  validatePolicy,
} from './network.js';
export { GUEST_NET } from './guest-net.js';
export {
  dnsGateAllows,
  fqdnCovers,
  fqdnIntersects,
  fqdnMatches,
  fqdnPatternProblem,
  fqdnRuleIsDead,
  normalizeName,
} from './fqdn.js';
export type {
  BridgeOwner,
  DnsPolicy,
  EgressPolicy,
  EgressRule,
  FirewallPolicy,
  FirewallRule,
  NetworkManagerOptions,
  NetworkProbe,
  ReconcileResult,
} from './network.js';
export {
  Confinement,
  MEMORY_OVERHEAD_MIB,
  QEMU_USER,
  SANDBOX,
  ensureUser,
  lookupUser,
} from './confine.js';
export type { ConfineOptions } from './confine.js';
export { detectCgroups, probeCgroups } from './cgroups.js';
export type { CgroupLimits, Cgroups } from './cgroups.js';
