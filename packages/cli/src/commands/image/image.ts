// fastvm image import <ref>: import an image as a snapshot.
import type { Command } from 'commander';
import {
  newCommand,
  newGroup,
  onRun,
  positiveInt,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { cancellableOnSigint, printResult, progressPrinter } from '../build.js';

export interface ImageImportOptions extends CommandBase {
  ref: string;
  name: string | undefined;
  username: string | undefined;
  password: string | undefined;
  machineType: string | undefined;
  diskGiB: number | undefined;
}

export function newImageCommand(f: Factory): Command {
  return newGroup(f, 'image', 'Import images as snapshots', [newImageImportCommand(f)]);
}

export function newImageImportCommand(
  f: Factory,
  runF: RunF<ImageImportOptions> = imageImportRun,
): Command {
  const cmd = newCommand(
    f,
    'import <ref>',
    'Import an image (fastvm/base, debian:bookworm, or a registry image) as a snapshot',
  )
    .option('-n, --name <name>', 'name of the produced snapshot')
    .option('--username <user>', 'registry user name')
    .option('--password-env <VAR>', 'environment variable holding the registry password')
    .option('-m, --machine <type>', 'machine type (default c1m2)')
    .option('--disk <GiB>', 'disk size in GiB (default 10)');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{
      name?: string;
      username?: string;
      passwordEnv?: string;
      machine?: string;
      disk?: string;
    }>();
    return runF({
      ...base,
      ref: c.args[0]!,
      name: o.name,
      username: o.username,
      password: o.passwordEnv !== undefined ? base.io.env[o.passwordEnv] : undefined,
      machineType: o.machine,
      diskGiB: positiveInt(o.disk, '--disk'),
    });
  });
}

export async function imageImportRun(o: ImageImportOptions): Promise<number> {
  const client = await o.client();
  const snap = await cancellableOnSigint((signal) =>
    client.importImage(o.ref, {
      name: o.name,
      registryUsername: o.username,
      registryPassword: o.password,
      machineType: o.machineType as never,
      diskGiB: o.diskGiB,
      signal,
      ...progressPrinter(o),
    }),
  );
  printResult(o, snap);
  return 0;
}
