/**
 * Versioned schema migrations, applied in name order by Kysely's `Migrator` at startup (and by
 * the admin commands). Never edit a released migration; add a new one.
 * @module
 */
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';

/* eslint-disable @typescript-eslint/no-explicit-any -- migrations run against an unknown schema */
const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('orgs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();

      await db.schema
        .createTable('api_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('key_hash', 'text', (c) => c.notNull().unique())
        .addColumn('key_prefix', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('revoked_at', 'text')
        .execute();

      await db.schema
        .createTable('quota_limits')
        .addColumn('org_id', 'text', (c) => c.primaryKey().references('orgs.id'))
        .addColumn('vcpu', 'integer')
        .addColumn('memory_mib', 'integer')
        .addColumn('disk_gib', 'integer')
        .addColumn('snapshot_count', 'integer')
        .addColumn('volume_count', 'integer')
        .addColumn('volume_gib', 'integer')
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();

      await db.schema
        .createTable('vms')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('machine', 'text', (c) => c.notNull())
        .addColumn('cpu', 'integer', (c) => c.notNull())
        .addColumn('memory_mib', 'integer', (c) => c.notNull())
        .addColumn('disk_gib', 'integer', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('error', 'text')
        .addColumn('source_snapshot_id', 'text')
        .addColumn('source_name', 'text', (c) => c.notNull().defaultTo(''))
        .addColumn('firewall', 'text', (c) => c.notNull())
        .addColumn('metadata', 'text', (c) => c.notNull())
        .addColumn('public_ipv6', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('deleted_at', 'text')
        .execute();
      await db.schema
        .createIndex('vms_org_live')
        .on('vms')
        .columns(['org_id', 'deleted_at'])
        .execute();
      await db.schema.createIndex('vms_org_name').on('vms').columns(['org_id', 'name']).execute();
      await db.schema.createIndex('vms_status').on('vms').column('status').execute();

      await db.schema
        .createTable('snapshots')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('error', 'text')
        .addColumn('machine', 'text', (c) => c.notNull())
        .addColumn('cpu', 'integer', (c) => c.notNull())
        .addColumn('memory_mib', 'integer', (c) => c.notNull())
        .addColumn('disk_gib', 'integer', (c) => c.notNull())
        .addColumn('firewall', 'text', (c) => c.notNull())
        .addColumn('metadata', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('deleted_at', 'text')
        .execute();
      await db.schema
        .createIndex('snapshots_org_live')
        .on('snapshots')
        .columns(['org_id', 'deleted_at'])
        .execute();
      await db.schema
        .createIndex('snapshots_org_name')
        .on('snapshots')
        .columns(['org_id', 'name'])
        .execute();
      await db.schema.createIndex('snapshots_status').on('snapshots').column('status').execute();
    },
  },
  // Pause/resume and TTL (issue 8).
  '0002_pause_ttl': {
    async up(db: Kysely<any>): Promise<void> {
      // One column per statement: SQLite's ALTER TABLE adds one at a time.
      await db.schema.alterTable('vms').addColumn('ttl_seconds', 'integer').execute();
      await db.schema.alterTable('vms').addColumn('ttl_action', 'text').execute();
      await db.schema.alterTable('vms').addColumn('expires_at_ms', 'bigint').execute();
      await db.schema.alterTable('vms').addColumn('ttl_remaining_ms', 'bigint').execute();
      await db.schema.alterTable('vms').addColumn('paused_at', 'text').execute();
    },
  },
  // Environment variables of VMs and snapshots (issue 14): JSON objects, `{}` for older rows.
  '0003_env_vars': {
    async up(db: Kysely<any>): Promise<void> {
      for (const table of ['vms', 'snapshots']) {
        await db.schema
          .alterTable(table)
          .addColumn('env_vars', 'text', (c) => c.notNull().defaultTo('{}'))
          .execute();
      }
    },
  },
  // SSH public keys of orgs (issue 14); a fingerprint is unique across all orgs.
  '0004_ssh_keys': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('ssh_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('fingerprint', 'text', (c) => c.notNull().unique())
        .addColumn('public_key', 'text', (c) => c.notNull())
        .addColumn('name', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('ssh_keys_org').on('ssh_keys').column('org_id').execute();
    },
  },
  // Published services of VMs and the lists snapshots captured (issue 14): JSON arrays, `[]`
  // for older rows.
  '0005_services': {
    async up(db: Kysely<any>): Promise<void> {
      for (const table of ['vms', 'snapshots']) {
        await db.schema
          .alterTable(table)
          .addColumn('services', 'text', (c) => c.notNull().defaultTo('[]'))
          .execute();
      }
    },
  },
  // Lineage (issue 18): a snapshot's parent is the snapshot its VM was restored from (kept when
  // either is deleted). Older rows get it from their VM's row. Indexes for the lineage walks:
  // VMs by source snapshot, snapshots by VM and by parent.
  '0006_lineage': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('snapshots').addColumn('parent_snapshot_id', 'text').execute();
      await sql`UPDATE snapshots SET parent_snapshot_id =
        (SELECT vms.source_snapshot_id FROM vms WHERE vms.id = snapshots.vm_id)`.execute(db);
      await db.schema
        .createIndex('vms_org_source_snapshot')
        .on('vms')
        .columns(['org_id', 'source_snapshot_id'])
        .execute();
      await db.schema
        .createIndex('snapshots_org_vm')
        .on('snapshots')
        .columns(['org_id', 'vm_id'])
        .execute();
      await db.schema
        .createIndex('snapshots_org_parent')
        .on('snapshots')
        .columns(['org_id', 'parent_snapshot_id'])
        .execute();
    },
  },
  // Volumes (issue 16): persistent disks of an org; a VM's attachments and what a snapshot
  // recorded of them are JSON arrays on their rows (`[]` for older rows).
  '0007_volumes': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('volumes')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('size_gib', 'integer', (c) => c.notNull())
        .addColumn('pending_size_gib', 'integer')
        .addColumn('used_gib', 'real')
        .addColumn('access_mode', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('deleted_at', 'text')
        .execute();
      await db.schema
        .createIndex('volumes_org_live')
        .on('volumes')
        .columns(['org_id', 'deleted_at'])
        .execute();
      for (const table of ['vms', 'snapshots']) {
        await db.schema
          .alterTable(table)
          .addColumn('volumes', 'text', (c) => c.notNull().defaultTo('[]'))
          .execute();
      }
    },
  },
  '0008_builds': {
    async up(db: Kysely<any>): Promise<void> {
      // Builds and snapshot imports (one table, `kind`); the record is a JSON document.
      await db.schema
        .createTable('builds')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('doc', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('builds_org').on('builds').columns(['org_id', 'kind']).execute();
      await db.schema.createIndex('builds_status').on('builds').column('status').execute();
      // The step cache: internal snapshots by key, per org (never shared across orgs).
      await db.schema
        .createTable('build_cache')
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('snapshot_id', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('last_used_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('build_cache_pk', ['org_id', 'key'])
        .execute();
    },
  },
  // Several hosts (issue 22): the host registry, and the host that owns each VM and took each
  // snapshot (null on one machine, and for rows written before; the first host of a cluster
  // claims those). Heartbeats are the database's clock, so hosts' clocks may disagree.
  '0009_hosts': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('hosts')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('advertise_url', 'text', (c) => c.notNull())
        .addColumn('memory_limit_mib', 'integer', (c) => c.notNull())
        .addColumn('vcpu_limit', 'integer', (c) => c.notNull())
        .addColumn('machine_types', 'text', (c) => c.notNull().defaultTo('[]'))
        .addColumn('guest_image', 'text', (c) => c.notNull().defaultTo(''))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('state_reason', 'text')
        .addColumn('heartbeat_at', 'timestamptz', (c) => c.notNull())
        .addColumn('started_at', 'timestamptz', (c) => c.notNull())
        .execute();
      for (const table of ['vms', 'snapshots']) {
        await db.schema.alterTable(table).addColumn('host_id', 'text').execute();
      }
      await db.schema
        .createIndex('vms_host_status')
        .on('vms')
        .columns(['host_id', 'status'])
        .execute();
      await db.schema
        .createIndex('snapshots_host_status')
        .on('snapshots')
        .columns(['host_id', 'status'])
        .execute();
    },
  },
  '0010_snapshot_holders': {
    // Multi-host snapshot mobility: the hosts that hold a verified copy of a snapshot's files.
    // No foreign keys: a host row (0009_hosts) may go while its copies are still listed, and a
    // copy is recorded by the host that made it, whoever's snapshot it is.
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('snapshot_holders')
        .addColumn('snapshot_id', 'text', (c) => c.notNull())
        .addColumn('host_id', 'text', (c) => c.notNull())
        .addColumn('verified_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('snapshot_holders_pk', ['snapshot_id', 'host_id'])
        .execute();
      await db.schema
        .createIndex('snapshot_holders_host')
        .on('snapshot_holders')
        .column('host_id')
        .execute();
    },
  },
};
/* eslint-enable @typescript-eslint/no-explicit-any */

const provider: MigrationProvider = {
  async getMigrations() {
    return migrations;
  },
};

/** Applies pending migrations; returns the names applied. Throws if one fails. */
export async function migrateToLatest<DB>(db: Kysely<DB>): Promise<string[]> {
  const migrator = new Migrator({ db, provider });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    throw new Error(`database migration failed: ${String(error)}`, { cause: error });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/** Names of all migrations this build knows, in order. */
export const MIGRATION_NAMES: readonly string[] = Object.keys(migrations).sort();
