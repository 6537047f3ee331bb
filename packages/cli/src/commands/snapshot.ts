// fastvm snapshot create|list|rename|rm|restore
import type { Command } from 'commander';
import type { Snapshot } from 'fastvm';
import type { Context } from '../context.js';
import { age, formatFirewall, keyValues, snapshotToJson, table } from '../output.js';
import { leaf, policyFrom, positiveInt, printVm, removeAll, statusText } from './common.js';
import { collect } from '../rules.js';

function printSnapshot(ctx: Context, s: Snapshot): void {
  if (ctx.json) {
    ctx.out(`${JSON.stringify(snapshotToJson(s), null, 2)}\n`);
    return;
  }
  ctx.out(
    keyValues([
      ['ID', s.id],
      ['NAME', s.name],
      ['STATUS', statusText(ctx, s.status)],
      ['VM', s.vmId],
      ['FIREWALL', formatFirewall(s.firewall)],
      ['CREATED', `${s.createdAt} (${age(s.createdAt)})`],
    ]),
  );
}

/** Registers the `snapshot` subcommands on `group`. */
export function snapshotCommands(group: Command, ctx: Context, done: (code: number) => void): void {
  group.description('Create, list, restore and delete snapshots');

  leaf(group, 'create <vm>', 'Snapshot a running VM and wait until the snapshot is ready')
    .option('-n, --name <name>', 'snapshot name (generated when omitted)')
    .option('--timeout <sec>', 'seconds to wait for the snapshot to be ready (default 300)')
    .action(async (ref: string, o: { name?: string; timeout?: string }) => {
      const waitSec = positiveInt(o.timeout, '--timeout');
      const spin = ctx.spinner().start(`Snapshotting ${ref}…`);
      try {
        const snap = await ctx.withRef('vm', ref, (id) =>
          ctx.client().snapshot(id, {
            name: o.name,
            timeout: waitSec === undefined ? undefined : waitSec * 1000,
          }),
        );
        spin.stop(`✓ snapshot ${snap.name} is ready (${spin.elapsed})`);
        printSnapshot(ctx, snap);
      } finally {
        spin.stop();
      }
      done(0);
    });

  const list = async (): Promise<void> => {
    const snaps = await ctx.client().listSnapshots();
    if (ctx.json) ctx.out(`${JSON.stringify(snaps.map(snapshotToJson), null, 2)}\n`);
    else if (snaps.length === 0) ctx.out('No snapshots.\n');
    else
      ctx.out(
        table(
          ['ID', 'NAME', 'VM', 'STATUS', 'CREATED'],
          snaps.map((s) => [s.id, s.name, s.vmId, statusText(ctx, s.status), age(s.createdAt)]),
        ),
      );
    done(0);
  };
  leaf(group, 'list', 'List snapshots').action(list);
  leaf(group, 'ls', 'Alias of list').action(list);

  leaf(group, 'get <snapshot>', 'Show a snapshot (by id or name)').action(async (ref: string) => {
    printSnapshot(ctx, await ctx.withRef('snapshot', ref, (id) => ctx.client().getSnapshot(id)));
    done(0);
  });

  leaf(group, 'rename <snapshot> <new-name>', 'Rename a snapshot').action(
    async (ref: string, name: string) => {
      printSnapshot(
        ctx,
        await ctx.withRef('snapshot', ref, (id) => ctx.client().renameSnapshot(id, name)),
      );
      done(0);
    },
  );

  leaf(group, 'rm <snapshot...>', 'Delete one or more snapshots')
    .option('-y, --yes', 'do not ask for confirmation')
    .action(async (refs: string[], o: { yes?: boolean }) => {
      const snaps = [];
      for (const ref of refs)
        snaps.push(await ctx.withRef('snapshot', ref, (id) => ctx.client().getSnapshot(id)));
      await removeAll(ctx, snaps, { one: 'snapshot', many: 'snapshots' }, o.yes, (id) =>
        ctx.client().removeSnapshot(id),
      );
      done(0);
    });

  leaf(group, 'restore <snapshot>', 'Restore a new VM from a snapshot and wait until it is running')
    .option('-n, --name <name>', 'VM name (generated when omitted)')
    .option('--mode <mode>', "override the snapshot's firewall mode: open or restricted")
    .option(
      '-r, --rule <rule>',
      'firewall ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)',
      collect,
    )
    .option('--timeout <sec>', 'seconds to wait for the VM to be running (default 300)')
    .action(
      async (
        ref: string,
        o: { name?: string; mode?: string; rule?: string[]; timeout?: string },
      ) => {
        const waitSec = positiveInt(o.timeout, '--timeout');
        const firewall = policyFrom(o.mode, o.rule);
        const spin = ctx.spinner().start(`Restoring ${ref}…`);
        try {
          const vm = await ctx.withRef('snapshot', ref, (id) =>
            ctx.client().restore(id, {
              name: o.name,
              firewall,
              timeout: waitSec === undefined ? undefined : waitSec * 1000,
            }),
          );
          spin.stop(`✓ VM ${vm.name} is running (${spin.elapsed})`);
          printVm(ctx, vm);
        } finally {
          spin.stop();
        }
        done(0);
      },
    );
}
