// fastvm build -f Dockerfile [-t name] [--build-arg K=V] [--target x] DIR: build a snapshot from
// a Dockerfile, printing the build's phases and RUN output as they come; the snapshot at the end.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import type { BuildEvent, Snapshot } from 'fastvm';
import {
  collect,
  newCommand,
  onRun,
  positiveInt,
  type CommandBase,
  type RunF,
} from '../cmdutil.js';
import { CliError } from '../errors.js';
import type { Factory } from '../factory.js';
import { json, snapshotToJson } from '../output.js';
import { printSnapshot } from '../views.js';

export interface BuildRunOptions extends CommandBase {
  dir: string;
  /** Dockerfile path (default DIR/Dockerfile). */
  file: string | undefined;
  name: string | undefined;
  buildArgs: Record<string, string>;
  target: string | undefined;
  machineType: string | undefined;
  diskGiB: number | undefined;
}

export function newBuildCommand(f: Factory, runF: RunF<BuildRunOptions> = buildRun): Command {
  const cmd = newCommand(f, 'build <dir>', 'Build a snapshot from a Dockerfile (each step cached)')
    .option('-f, --file <path>', 'the Dockerfile (default <dir>/Dockerfile)')
    .option('-t, --tag <name>', 'name of the produced snapshot')
    .option('--build-arg <K=V>', 'a build argument (repeatable)', collect)
    .option('--target <stage>', 'build up to this stage')
    .option('-m, --machine <type>', 'build VM machine type (default c1m2)')
    .option('--disk <GiB>', 'disk size in GiB (default 10)');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{
      file?: string;
      tag?: string;
      buildArg?: string[];
      target?: string;
      machine?: string;
      disk?: string;
    }>();
    const buildArgs: Record<string, string> = {};
    for (const kv of o.buildArg ?? []) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new CliError(`--build-arg ${kv}: expected KEY=VALUE`, 2);
      buildArgs[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    return runF({
      ...base,
      dir: c.args[0]!,
      file: o.file,
      name: o.tag,
      buildArgs,
      target: o.target,
      machineType: o.machine,
      diskGiB: positiveInt(o.disk, '--disk'),
    });
  });
}

/** Prints events and build output on stderr (stdout keeps the result, for --json). */
/** Runs `start` with a signal that Ctrl-C aborts (a build or import is cancelled, not left running). */
export async function cancellableOnSigint<T>(
  start: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const abort = new AbortController();
  const onSigint = (): void => abort.abort();
  process.once('SIGINT', onSigint);
  try {
    return await start(abort.signal);
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

/** The snapshot a build or import produced: JSON with `--json`, else a table. */
export function printResult(o: CommandBase, snap: Snapshot): void {
  if (o.json) o.io.stdout.write(json(snapshotToJson(snap)));
  else printSnapshot(o, snap);
}

export function progressPrinter(o: CommandBase): {
  onEvent: (e: BuildEvent) => void;
  onLog: (d: string) => void;
} {
  const err = (s: string): unknown => o.io.stderr.write(s);
  return {
    onEvent: (e) => {
      if (e.status === 'started' && e.phase !== 'build')
        err(`==> ${e.phase}${e.message ? `: ${e.message}` : ''}\n`);
      else if (e.status !== 'started')
        err(`==> ${e.phase} ${e.status}${e.message ? `: ${e.message}` : ''}\n`);
    },
    onLog: (d) => err(d),
  };
}

export async function buildRun(o: BuildRunOptions): Promise<number> {
  const st = await fsp.stat(o.dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${o.dir}: not a directory`, 2);
  const file = o.file ?? path.join(o.dir, 'Dockerfile');
  const dockerfile = await fsp.readFile(file, 'utf8').catch(() => {
    throw new CliError(`${file}: cannot read the Dockerfile`, 2);
  });
  const client = await o.client();
  const snap = await cancellableOnSigint((signal) =>
    client.build({
      dockerfile,
      context: o.dir,
      name: o.name,
      buildArgs: o.buildArgs,
      target: o.target,
      machineType: o.machineType as never,
      diskGiB: o.diskGiB,
      signal,
      ...progressPrinter(o),
    }),
  );
  printResult(o, snap);
  return 0;
}
