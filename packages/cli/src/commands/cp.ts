// fastvm cp <local> <vm>:<path> | fastvm cp <vm>:<path> <local>
import path from 'node:path';
import type { Command } from 'commander';
import type { TransferResult } from 'fastvm';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { ProgressBar, formatBytes } from '../output.js';

/** A `<vm>:<path>` operand (`vm` has no `/`, so `./a:b` stays a local path). */
export interface RemoteSpec {
  vm: string;
  path: string;
}

/** Parses `<vm>:<path>`; relative paths are under /root (the VM's home), `vm:` is /root/. */
export function parseRemote(arg: string): RemoteSpec | undefined {
  const m = /^([^/:]+):(.*)$/s.exec(arg);
  if (!m) return undefined;
  const rest = m[2]!;
  return { vm: m[1]!, path: rest.startsWith('/') ? rest : `/root/${rest}` };
}

/** Configures `group` as the `cp` command itself. */
export function cpCommand(group: Command, ctx: Context, done: (code: number) => void): void {
  group
    .description(
      'Copy a file or directory into or out of a VM: cp <local> <vm>:<path> or cp <vm>:<path> <local>.\n' +
        'Directories copy their contents into the destination (created if missing).',
    )
    .arguments('<source> <destination>')
    .action(async (source: string, destination: string) => {
      const from = parseRemote(source);
      const to = parseRemote(destination);
      if (from && to) throw new CliError('cp: one side must be a local path', 2);
      if (!from && !to) {
        throw new CliError('cp: one side must be <vm>:<path> (e.g. dev:/root/file)', 2);
      }
      const client = ctx.client();
      const bar = new ProgressBar(
        ctx.json ? { write: () => true, isTTY: false } : ctx.io.stderr,
        from ? `${from.vm}:${from.path}` : path.basename(source),
      );
      const onProgress = (p: { bytes: number; total: number | undefined }): void =>
        bar.update(p.bytes, p.total);
      let result: TransferResult;
      try {
        result = to
          ? await ctx.withRef('vm', to.vm, (id) =>
              client.upload(id, path.resolve(source), to.path, { onProgress }),
            )
          : await ctx.withRef('vm', from!.vm, (id) =>
              client.download(id, from!.path, path.resolve(destination), { onProgress }),
            );
      } catch (err) {
        bar.stop();
        throw err;
      }
      const secs = result.durationMs / 1000;
      const rate = secs > 0 ? `${formatBytes(result.bytes / secs)}/s` : '';
      bar.stop(
        `✓ ${to ? 'Uploaded' : 'Downloaded'} ${result.kind} ${formatBytes(result.bytes)} to ` +
          `${to ? `${to.vm}:` : ''}${result.destination} in ${secs.toFixed(1)}s (${rate})`,
      );
      if (ctx.json) ctx.out(`${JSON.stringify(result, null, 2)}\n`);
      done(0);
    });
}
