// The command pattern shared by every `fastvm` command (after gh): each command file exports an
// options type, `new<X>Command(f, runF?)`, which builds the commander command and turns flags and
// arguments into the options (so tests can check parsing alone by passing `runF`), and
// `<x>Run(opts)`, which does the work only through the options. This file holds what they share.
import { Command, Option } from 'commander';
import type { FastVM, FirewallPolicy } from 'fastvm';
import { CliError } from './errors.js';
import type { Factory, GlobalOptions, IO } from './factory.js';
import { parseRule } from './rules.js';

/** What every command's options carry. */
export interface CommandBase {
  /** Streams and environment. */
  io: IO;
  /** `--json`: print the API's JSON instead of tables. */
  json: boolean;
  /** The SDK client, created on first use from `--api-key`/`--base-url`, env and config file. */
  client: () => Promise<FastVM>;
}

/** Runs a command with its options and resolves with the process exit code. */
export type RunF<T> = (opts: T) => Promise<number>;

/**
 * A command with the settings every `fastvm` command shares: errors are thrown (main reports
 * them) and printed as `Error: <message> (see '<command> --help')`, help goes to the IO streams.
 *
 * @param spec - Name and arguments, e.g. `rename <vm> <new-name>`.
 */
export function newCommand(f: Factory, spec: string, description: string): Command {
  const [name, ...args] = spec.split(' ');
  const cmd = new Command(name);
  if (args.length > 0) cmd.arguments(args.join(' '));
  const columns = (f.io.stdout as { columns?: number }).columns;
  return cmd
    .description(description)
    .addHelpOption(new Option('-h, --help', 'display help for command').helpGroup(GLOBAL_OPTIONS))
    .exitOverride()
    .configureOutput({
      writeOut: (s) => f.io.stdout.write(s),
      writeErr: (s) => f.io.stderr.write(s),
      outputError: (s, write) => write(usageError(s, cmd)),
      getOutHelpWidth: () => (f.io.stdout.isTTY && columns ? columns : 80),
      getErrHelpWidth: () => 80,
      getOutHasColors: () => false,
      getErrHasColors: () => false,
    });
}

/** `fastvm vm launch`: the names from the root down to `cmd`. */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Commander's `error: …` message in the CLI's format. */
function usageError(message: string, cmd: Command): string {
  const text = message
    .replace(/^error: /, '')
    .trim()
    .replace(/\s*\n\s*/g, ' ') // "(Did you mean --json?)" comes on a line of its own
    .replace(/^option '(-[^ ',]+)[^']*' argument missing$/, "option '$1' needs a value");
  const root = cmd.parent === null;
  return `Error: ${text} (see '${root ? 'fastvm' : commandPath(cmd)} --help')\n`;
}

const GLOBAL_OPTIONS = 'Global options:';

/** Adds `--json`, `--api-key` and `--base-url`, listed under "Global options" in the help. */
export function addGlobalOptions(cmd: Command): Command {
  return cmd
    .optionsGroup(GLOBAL_OPTIONS)
    .option('--json', 'print JSON with the API field names instead of tables')
    .option('--api-key <key>', 'API key (else FASTVM_API_KEY, else the config file)')
    .option('--base-url <url>', 'API base URL (else FASTVM_BASE_URL, else the config file)');
}

/** Global flags given at every level down to `cmd`; the later (deeper) one wins. */
export function globalsOf(cmd: Command): GlobalOptions {
  const chain: Command[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) chain.unshift(c);
  const globals: GlobalOptions = {};
  for (const c of chain) {
    const o = c.opts<GlobalOptions>();
    if (o.json !== undefined) globals.json = o.json;
    if (o.apiKey !== undefined) globals.apiKey = o.apiKey;
    if (o.baseUrl !== undefined) globals.baseUrl = o.baseUrl;
  }
  return globals;
}

/**
 * Finishes a leaf command: adds the global options and an action that builds the options with
 * `build` and stores the exit code of the run in `f.exitCode`.
 *
 * @param build - Receives the parsed command (`args`, `opts()`) and the base options.
 */
export function onRun(
  f: Factory,
  cmd: Command,
  build: (c: Command, base: CommandBase) => Promise<number>,
): Command {
  addGlobalOptions(cmd);
  return cmd.action(async (...params: unknown[]) => {
    const c = params[params.length - 1] as Command;
    const globals = globalsOf(c);
    f.exitCode = await build(c, {
      io: f.io,
      json: globals.json === true,
      client: () => f.client(globals),
    });
  });
}

/**
 * A command group (`vm`, `snapshot`, …): global options before the subcommand name belong to the
 * group; no subcommand prints the group's help; an unknown one is an error with exit code 2.
 */
export function newGroup(
  f: Factory,
  name: string,
  description: string,
  subcommands: Command[],
): Command {
  const group = addGlobalOptions(newCommand(f, name, description)).enablePositionalOptions();
  for (const sub of subcommands) group.addCommand(sub);
  return group
    .helpCommand(true)
    .allowExcessArguments()
    .action((_opts: unknown, c: Command) => {
      const [sub] = c.args;
      if (sub === undefined) {
        c.outputHelp();
        // `fastvm vm --json`: options but no command is a usage error.
        f.exitCode = Object.keys(c.opts()).length > 0 ? 2 : 0;
        return;
      }
      throw new CliError(
        `unknown command '${commandPath(c)} ${sub}' (see '${commandPath(c)} --help')`,
        2,
      );
    });
}

/** Commander collector for repeatable options (`-r`). */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Parses a positive integer option value. */
export function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) <= 0)
    throw new CliError(`${flag} must be a positive integer, got '${value}'`);
  return Number(value);
}

/** Builds a firewall policy from `--mode` and repeatable `-r` values. */
export function policyFrom(
  mode: string | undefined,
  rules: string[] | undefined,
): FirewallPolicy | undefined {
  if (mode === undefined && rules === undefined) return undefined;
  const m = mode ?? 'restricted';
  if (m !== 'open' && m !== 'restricted')
    throw new CliError(`--mode must be 'open' or 'restricted', got '${m}'`);
  const policy: FirewallPolicy = { mode: m };
  if (rules !== undefined) policy.ingress = rules.map(parseRule);
  return policy;
}

/**
 * Runs `fn` with a VM or snapshot reference as given (the server resolves ids and names); on 404
 * resolves it client-side (exact id, exact name, or unique id prefix) and tries once more.
 */
export async function withRef<T>(
  o: CommandBase,
  kind: 'vm' | 'snapshot',
  ref: string,
  fn: (id: string) => Promise<T>,
): Promise<T> {
  try {
    return await fn(ref);
  } catch (err) {
    // The SDK is loaded: `fn` got this error from it.
    const { NotFoundError } = await import('fastvm');
    if (!(err instanceof NotFoundError)) throw err;
    const id = await resolveRef(o, kind, ref);
    if (id === undefined || id === ref) throw err;
    return fn(id);
  }
}

/** Finds the id of a VM or snapshot by id, name or unique id prefix via the list endpoint. */
export async function resolveRef(
  o: CommandBase,
  kind: 'vm' | 'snapshot',
  ref: string,
): Promise<string | undefined> {
  const client = await o.client();
  const items: Array<{ id: string; name: string }> =
    kind === 'vm' ? await client.list() : await client.listSnapshots();
  const exact = items.find((i) => i.id === ref);
  if (exact) return exact.id;
  for (const candidates of [
    items.filter((i) => i.name === ref),
    items.filter((i) => i.id.startsWith(ref)),
  ]) {
    if (candidates.length === 1) return candidates[0]!.id;
    if (candidates.length > 1) {
      const what = kind === 'vm' ? 'VMs' : 'snapshots';
      throw new CliError(
        `'${ref}' matches ${candidates.length} ${what} (${candidates.map((c) => c.id).join(', ')}); use the id`,
      );
    }
  }
  return undefined;
}

/** Asks for confirmation on a terminal; non-interactive runs proceed. */
export async function confirm(io: IO, question: string): Promise<boolean> {
  if (!io.stdin.isTTY || !io.stderr.isTTY || !io.prompt) return true;
  const answer = await io.prompt(`${question} [y/N] `);
  return /^y(es)?$/i.test(answer.trim());
}

/**
 * Deletes already-resolved VMs or snapshots after one confirmation (unless `yes`), printing a
 * line per object, or with `--json` the API's `{id, deleted}` (an array for several).
 */
export async function removeAll(
  o: CommandBase,
  items: ReadonlyArray<{ id: string; name: string }>,
  kind: { one: string; many: string },
  yes: boolean,
  remove: (id: string) => Promise<void>,
): Promise<void> {
  const what =
    items.length === 1
      ? `${kind.one} ${items[0]!.name} (${items[0]!.id})`
      : `${items.length} ${kind.many} (${items.map((i) => i.name).join(', ')})`;
  if (!yes && !(await confirm(o.io, `Delete ${what}?`))) throw new CliError('aborted');
  const deleted: Array<{ id: string; deleted: true }> = [];
  for (const item of items) {
    await remove(item.id);
    deleted.push({ id: item.id, deleted: true });
    if (!o.json) o.io.stdout.write(`Deleted ${kind.one} ${item.name} (${item.id})\n`);
  }
  if (o.json)
    o.io.stdout.write(`${JSON.stringify(deleted.length === 1 ? deleted[0] : deleted, null, 2)}\n`);
}
