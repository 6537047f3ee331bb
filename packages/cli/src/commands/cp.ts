// fastvm cp <local> <vm>:<path> | fastvm cp <vm>:<path> <local>
import path from 'node:path';
import type { Command } from 'commander';
import type { TransferResult } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../cmdutil.js';
import { CliError } from '../errors.js';
import type { Factory } from '../factory.js';
import { ProgressBar, formatBytes, json } from '../output.js';

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

export type CpOptions = CommandBase &
  (
    | { direction: 'upload'; local: string; remote: RemoteSpec }
    | { direction: 'download'; remote: RemoteSpec; local: string }
  );

export function newCpCommand(f: Factory, runF: RunF<CpOptions> = cpRun): Command {
  const cmd = newCommand(
    f,
    'cp <source> <destination>',
    'Copy a file or directory into or out of a VM: cp <local> <vm>:<path> or cp <vm>:<path> <local>.\n' +
      'Directories copy their contents into the destination (created if missing).',
  );
  return onRun(f, cmd, (c, base) => {
    const [source, destination] = c.args as [string, string];
    const from = parseRemote(source);
    const to = parseRemote(destination);
    if (from && to) throw new CliError('cp: one side must be a local path', 2);
    if (to) return runF({ ...base, direction: 'upload', local: source, remote: to });
    if (from) return runF({ ...base, direction: 'download', remote: from, local: destination });
    throw new CliError('cp: one side must be <vm>:<path> (e.g. dev:/root/file)', 2);
  });
}

export async function cpRun(o: CpOptions): Promise<number> {
  const client = await o.client();
  const { remote } = o;
  const up = o.direction === 'upload';
  const bar = new ProgressBar(
    o.json ? { write: () => true, isTTY: false } : o.io.stderr,
    up ? path.basename(o.local) : `${remote.vm}:${remote.path}`,
  );
  const onProgress = (p: { bytes: number; total: number | undefined }): void =>
    bar.update(p.bytes, p.total);
  let result: TransferResult;
  try {
    result = await withRef(o, 'vm', remote.vm, (id) =>
      up
        ? client.upload(id, path.resolve(o.local), remote.path, { onProgress })
        : client.download(id, remote.path, path.resolve(o.local), { onProgress }),
    );
  } catch (err) {
    bar.stop();
    throw err;
  }
  const secs = result.durationMs / 1000;
  const rate = secs > 0 ? `${formatBytes(result.bytes / secs)}/s` : '';
  bar.stop(
    `✓ ${up ? 'Uploaded' : 'Downloaded'} ${result.kind} ${formatBytes(result.bytes)} to ` +
      `${up ? `${remote.vm}:` : ''}${result.destination} in ${secs.toFixed(1)}s (${rate})`,
  );
  if (o.json) o.io.stdout.write(json(result));
  return 0;
}
