/**
 * @fastvm/server: the FastVM v1 HTTP API.
 *
 * ```ts
 * import { startServer } from '@fastvm/server';
 * import { FakeRuntime } from '@fastvm/server/testing';
 * const server = await startServer({ port: 0, dataDir, runtime: new FakeRuntime() });
 * // server.url, server.bootstrapKey … await server.close();
 * ```
 * @module
 */
export { startServer } from './server.js';
export type { ClusterOptions, MobilityDeps, ServerHandle, StartServerOptions } from './server.js';
export type { ClusterPeers, PeerHost, SnapshotMobility } from './cluster/seams.js';
export { buildApp } from './app.js';
export type { App, AppServices, BuildAppOptions } from './app.js';
export { ApiError, ERROR_CATALOG } from './errors.js';
export type { ErrorCode } from './errors.js';
export { NoopNetworkManager } from './services/network.js';
export {
  createNetworkManager,
  networkSettingsFromEnv,
  type NetworkSettings,
} from './services/host-network.js';
export type { NetworkManager, VmNetworkAttachment } from './services/network.js';
export { openStore } from './store/index.js';
export type { Store } from './store/index.js';
export { DEFAULT_QUOTA_LIMITS } from './domain/index.js';
export type { FirewallPolicy, FirewallRule, QuotaValues } from './domain/index.js';
export { OciImageSource } from './images/oci-image-source.js';
export type { OciImageSourceOptions } from './images/oci-image-source.js';
export { ImageError, isPlatformBase } from './services/image-source.js';
export type { ImageSource, ResolvedImage, ImageConfig } from './services/image-source.js';
