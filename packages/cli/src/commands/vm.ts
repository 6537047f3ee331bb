// fastvm vm launch|list|get|rename|rm|exec|console|pause|resume|ttl
import type { Command } from 'commander';
import type { ExecEvent, VMTtl } from 'fastvm';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { resultToJson } from '../output.js';
import { addConsoleCommand } from './console.js';
import { leaf, policyFrom, positiveInt, printVm, printVms, removeAll } from './common.js';
import { collect } from '../rules.js';

/** Registers the `vm` subcommands on `group`. */
export function vmCommands(group: Command, ctx: Context, done: (code: number) => void): void {
  group.description('Launch, inspect, run commands in and delete VMs');

  leaf(group, 'launch', 'Launch a VM and wait until it is running')
    .option('-m, --machine <type>', 'machine type: c1m2, c2m4, c4m8, c8m16', 'c1m2')
    .option('-n, --name <name>', 'VM name (generated when omitted)')
    .option('--disk-gib <n>', 'disk size in GiB')
    .option('--mode <mode>', 'firewall mode: open or restricted')
    .option(
      '-r, --rule <rule>',
      'firewall ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)',
      collect,
    )
    .option('--timeout <sec>', 'seconds to wait for the VM to be running (default 300)')
    .option(
      '--ttl <ttl>',
      'time to live DURATION[:pause|delete], e.g. 30s:pause, 2h:delete (default action pause)',
    )
    .action(
      async (o: {
        machine: string;
        name?: string;
        diskGib?: string;
        mode?: string;
        rule?: string[];
        timeout?: string;
        ttl?: string;
      }) => {
        const ttl = o.ttl === undefined ? undefined : parseTtl(o.ttl);
        const diskGib = positiveInt(o.diskGib, '--disk-gib');
        const firewall = policyFrom(o.mode, o.rule);
        const waitSec = positiveInt(o.timeout, '--timeout');
        const spin = ctx.spinner().start(`Launching ${o.machine} VM${o.name ? ` ${o.name}` : ''}…`);
        try {
          const vm = await ctx.client().launch({
            machine: o.machine,
            name: o.name,
            diskGib,
            firewall,
            ttl,
            timeout: waitSec === undefined ? undefined : waitSec * 1000,
          });
          spin.stop(`✓ VM ${vm.name} is running (${spin.elapsed})`);
          printVm(ctx, vm);
        } finally {
          spin.stop();
        }
        done(0);
      },
    );

  leaf(group, 'list', 'List VMs').action(async () => {
    printVms(ctx, await ctx.client().list());
    done(0);
  });
  leaf(group, 'ls', 'Alias of list').action(async () => {
    printVms(ctx, await ctx.client().list());
    done(0);
  });

  leaf(group, 'get <vm>', 'Show a VM (by id or name)').action(async (ref: string) => {
    printVm(ctx, await ctx.withRef('vm', ref, (id) => ctx.client().get(id)));
    done(0);
  });

  leaf(group, 'rename <vm> <new-name>', 'Rename a VM').action(async (ref: string, name: string) => {
    printVm(ctx, await ctx.withRef('vm', ref, (id) => ctx.client().rename(id, name)));
    done(0);
  });

  leaf(group, 'rm <vm...>', 'Delete one or more VMs')
    .option('-y, --yes', 'do not ask for confirmation')
    .action(async (refs: string[], o: { yes?: boolean }) => {
      const vms = [];
      for (const ref of refs) vms.push(await ctx.withRef('vm', ref, (id) => ctx.client().get(id)));
      await removeAll(ctx, vms, { one: 'VM', many: 'VMs' }, o.yes, (id) => ctx.client().remove(id));
      done(0);
    });

  leaf(
    group,
    'exec <vm> <command...>',
    'Run a command in a VM (words after <vm> form one sh -c command); output streams as it is\n' +
      'produced; exits with its exit code',
  )
    .option('--timeout <sec>', 'server-side limit on the command, in seconds')
    .option('--argv', 'send the arguments as the exact argv instead of through sh -c')
    .option('--no-stream', 'wait for the command to finish and print its output at once')
    .action(
      async (
        ref: string,
        words: string[],
        o: { timeout?: string; argv?: boolean; stream?: boolean },
      ) => {
        const timeoutSec = positiveInt(o.timeout, '--timeout');
        const command = o.argv ? words : words.join(' ');
        const client = ctx.client();
        if (o.stream !== false && !ctx.json) {
          // Streaming (NDJSON): output is written as it arrives; the first event (or error)
          // decides whether the VM reference needs resolving.
          const open = async (id: string) => {
            const events = client.stream(id, command, { timeoutSec });
            return { events, first: await events.next() };
          };
          const { events, first } = await ctx.withRef('vm', ref, open);
          let exit: Extract<ExecEvent, { type: 'exit' }> | undefined;
          const handle = (ev: ExecEvent): void => {
            if (ev.type === 'stdout') ctx.out(ev.data);
            else if (ev.type === 'stderr') ctx.err(ev.data);
            else exit = ev;
          };
          if (!first.done) handle(first.value);
          for await (const ev of events) handle(ev);
          if (!exit) throw new CliError('the command stream ended without an exit status');
          if (exit.timedOut) ctx.err(`fastvm: command timed out after ${timeoutSec ?? '?'}s\n`);
          done(exit.timedOut ? 124 : exitStatus(exit.exitCode));
          return;
        }
        const transport =
          timeoutSec === undefined ? undefined : Math.max(client.timeout, (timeoutSec + 30) * 1000);
        const result = await ctx.withRef('vm', ref, (id) =>
          client.run(id, command, { timeoutSec, timeout: transport }),
        );
        if (ctx.json) {
          ctx.out(`${JSON.stringify(resultToJson(result), null, 2)}\n`);
        } else {
          ctx.out(result.stdout);
          ctx.err(result.stderr);
          if (result.stdoutTruncated)
            ctx.err('fastvm: warning: stdout was truncated by the server\n');
          if (result.stderrTruncated)
            ctx.err('fastvm: warning: stderr was truncated by the server\n');
          if (result.timedOut) ctx.err(`fastvm: command timed out after ${timeoutSec ?? '?'}s\n`);
        }
        done(result.timedOut ? 124 : exitStatus(result.exitCode));
      },
    );

  leaf(group, 'pause <vm>', 'Pause a VM (memory and processes kept; vCPU quota released)').action(
    async (ref: string) => {
      printVm(ctx, await ctx.withRef('vm', ref, (id) => ctx.client().pause(id)));
      done(0);
    },
  );

  leaf(group, 'resume <vm>', 'Resume a paused VM').action(async (ref: string) => {
    printVm(ctx, await ctx.withRef('vm', ref, (id) => ctx.client().resume(id)));
    done(0);
  });

  leaf(
    group,
    'ttl <vm> <ttl>',
    "Set a VM's time to live (DURATION[:pause|delete], e.g. 10m:pause), 'refresh' it, or 'off'",
  ).action(async (ref: string, spec: string) => {
    const client = ctx.client();
    const vm = await ctx.withRef('vm', ref, (id) =>
      spec === 'refresh'
        ? client.refreshTtl(id)
        : client.setTtl(id, spec === 'off' ? null : parseTtl(spec)),
    );
    printVm(ctx, vm);
    done(0);
  });

  addConsoleCommand(group, ctx, done);
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `30`, `30s`, `10m:pause`, `2h:delete`, `1d` → a TTL (action defaults to pause). */
export function parseTtl(spec: string): VMTtl {
  const m = /^(\d+)([smhd]?)(?::(pause|delete))?$/.exec(spec.trim());
  const seconds = m ? Number(m[1]) * UNIT_SECONDS[m[2] || 's']! : NaN;
  if (!m || !(seconds >= 1) || seconds > 31_536_000) {
    throw new CliError(
      `--ttl must be DURATION[:pause|delete] with DURATION like 30s, 10m, 2h or 1d (1 s to 365 d), got '${spec}'`,
    );
  }
  return { seconds, action: (m[3] as VMTtl['action'] | undefined) ?? 'pause' };
}

/** A remote exit code as a process exit status (0..255; out-of-range values become 255). */
export function exitStatus(code: number): number {
  return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 255;
}
