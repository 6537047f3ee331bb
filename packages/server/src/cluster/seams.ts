/**
 * What the parts of multi-host (`cluster/`) promise each other: the host registry and request
 * forwarding on one side, snapshot mobility (pulling a snapshot's layers from a peer, replication)
 * on the other. On one machine (SQLite) none of this runs.
 * @module
 */
import crypto from 'node:crypto';

/** A host as its peers reach it. */
export interface PeerHost {
  readonly id: string;
  /** Base URL of the host's internal listener, e.g. `http://10.0.0.2:8090`. */
  readonly internalUrl: string;
}

/** The live hosts of the cluster (heartbeating, not this one). */
export interface ClusterPeers {
  readonly self: PeerHost;
  peers(): Promise<readonly PeerHost[]>;
  /** A peer by id (live or not), for pulling from the host that holds a snapshot. */
  peer(hostId: string): Promise<PeerHost | undefined>;
}

/** Snapshot layers across hosts. */
export interface SnapshotMobility {
  /** Ids of the hosts that hold a complete, verified copy of the snapshot. */
  holders(snapshotId: string): Promise<readonly string[]>;
  /**
   * Makes the snapshot present on this host: pulls its layers (and the layers it stands on)
   * from a holder over the internal channel, verified by digest. Idempotent; concurrent calls
   * share one pull.
   */
  ensureLocal(snapshotId: string, signal?: AbortSignal): Promise<void>;
  /** Records that this host holds the snapshot (when it becomes ready here). */
  recordLocal(snapshotId: string): Promise<void>;
  /** Forgets every copy (the snapshot was deleted): each holder deletes its files. */
  forget(snapshotId: string): Promise<void>;
}

/** Header carrying the cluster's shared secret on every internal request. */
export const CLUSTER_TOKEN_HEADER = 'x-fastvm-cluster-token';

/** Constant-time check of an internal request's token against the cluster secret. */
export function clusterTokenMatches(
  secret: string,
  presented: string | string[] | undefined,
): boolean {
  if (typeof presented !== 'string' || secret.length === 0) return false;
  const a = crypto.createHash('sha256').update(secret).digest();
  const b = crypto.createHash('sha256').update(presented).digest();
  return crypto.timingSafeEqual(a, b);
}
