// Entry point of the `fastvm` command: global options, then one command group parsed by commander.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Command } from 'commander';
import { FastVMError, VERSION as SDK_VERSION } from 'fastvm';
import { configCommands } from './commands/config.js';
import { consoleCommand } from './commands/console.js';
import { cpCommand } from './commands/cp.js';
import { firewallCommands } from './commands/firewall.js';
import { quotaCommand } from './commands/quota.js';
import { snapshotCommands } from './commands/snapshot.js';
import { vmCommands } from './commands/vm.js';
import { Context, type GlobalOptions, type IO } from './context.js';
import { CliError } from './errors.js';

type GroupBuilder = (group: Command, ctx: Context, done: (code: number) => void) => void;

const GROUPS: Record<string, GroupBuilder> = {
  vm: vmCommands,
  cp: cpCommand,
  console: consoleCommand,
  snapshot: snapshotCommands,
  firewall: firewallCommands,
  quota: quotaCommand,
  config: configCommands,
};

const HELP = `FastVM command-line tool: launch, snapshot, restore and run commands in microVMs.

Usage: fastvm [global options] <command> <subcommand> [options]

Commands:
  vm        launch | list | get | rename | rm | exec | console | pause | resume | ttl
  cp        copy files and directories: cp <local> <vm>:<path>, cp <vm>:<path> <local>
  console   an interactive shell in a VM (same as vm console; Ctrl-] disconnects)
  snapshot  create | list | get | rename | rm | restore
  firewall  get | set | patch
  quota     show quota limits and usage
  config    set | get | unset   (keys: api-key, base-url)

Global options (before or after the command):
  --api-key <key>   API key (else FASTVM_API_KEY, else the config file)
  --base-url <url>  API base URL (else FASTVM_BASE_URL, else the config file,
                    else https://api.fastvm.org)
  --json            print JSON with the API's field names instead of tables
  -V, --version     print the version
  -h, --help        show help

VMs and snapshots are addressed by id or name (or a unique id prefix).
Firewall rules (-r) are PROTO:PORT[-END][@CIDR,...], e.g. tcp:22, udp:8000-8010,
tcp:443@2001:db8::/32.

Examples:
  fastvm vm launch -m c2m4 -n dev
  fastvm vm exec dev -- uname -a
  fastvm console dev
  fastvm vm launch -n tmp --ttl 30m:delete
  fastvm cp ./src dev:/root/src && fastvm cp dev:/root/out.tar .
  fastvm snapshot create dev -n base && fastvm snapshot restore base -n dev2
  fastvm firewall set dev --mode restricted -r tcp:22 -r tcp:8080-8090@2001:db8::/32
  fastvm vm list --json | jq -r '.[].id'

Config file: $XDG_CONFIG_HOME/fastvm/config.json (default ~/.config/fastvm/config.json).
Run 'fastvm <command> --help' for details.
`;

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return `fastvm ${pkg.version ?? '?'} (sdk ${SDK_VERSION})`;
  } catch {
    return `fastvm (sdk ${SDK_VERSION})`;
  }
}

/** Splits the global options given before the command name from the rest. */
export function splitGlobals(argv: string[]): {
  globals: GlobalOptions;
  help: boolean;
  version: boolean;
  rest: string[];
} {
  const globals: GlobalOptions = {};
  let help = false;
  let showVersion = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-')) break;
    const [flag, inline] =
      a.startsWith('--') && a.includes('=')
        ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)]
        : [a, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new CliError(`option '${flag}' needs a value`);
      return v;
    };
    if (flag === '--json') globals.json = true;
    else if (flag === '--api-key') globals.apiKey = value();
    else if (flag === '--base-url') globals.baseUrl = value();
    else if (flag === '-h' || flag === '--help') help = true;
    else if (flag === '-V' || flag === '--version') showVersion = true;
    else throw new CliError(`unknown option '${a}' (see 'fastvm --help')`);
  }
  return { globals, help, version: showVersion, rest: argv.slice(i) };
}

const EXEC_VALUE_OPTIONS = new Set(['--timeout', '--api-key', '--base-url']);

/**
 * `fastvm vm exec [options] <vm> <command...>`: everything after the VM belongs to the remote
 * command (like `docker exec`), so `--` is inserted there when the user did not write it.
 */
export function protectExecArgs(args: string[]): string[] {
  if (args[0] !== 'exec') return args;
  for (let i = 1; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return args;
    if (a.startsWith('-')) {
      if (EXEC_VALUE_OPTIONS.has(a)) i++;
      continue;
    }
    return args[i + 1] === '--' ? args : [...args.slice(0, i + 1), '--', ...args.slice(i + 1)];
  }
  return args;
}

/**
 * Runs the CLI with `argv` (without node and script) and returns the exit code.
 *
 * @param argv - Arguments after `fastvm`.
 * @param io - Streams and environment.
 */
export async function main(argv: string[], io: IO): Promise<number> {
  let ctx: Context | undefined;
  try {
    const { globals, help, version: showVersion, rest } = splitGlobals(argv);
    if (showVersion) {
      io.stdout.write(`${version()}\n`);
      return 0;
    }
    const name = rest[0];
    if (name === undefined || name === 'help') {
      io.stdout.write(HELP);
      return 0;
    }
    const build = GROUPS[name];
    if (!build) throw new CliError(`unknown command '${name}' (see 'fastvm --help')`, 2);

    ctx = new Context(io, globals);
    let code = 0;
    const group = new Command(`fastvm ${name}`);
    group.exitOverride();
    group.storeOptionsAsProperties(false).passCommandToAction(false);
    group
      .option('--json', 'print JSON with the API field names')
      .option('--api-key <key>', 'API key')
      .option('--base-url <url>', 'API base URL');
    ctx.lateGlobals = () => group.opts() as GlobalOptions;
    build(group, ctx, (c) => (code = c));
    let unknown: string | undefined;
    if (group.commands.length > 0)
      group.on('command:*', (operands: string[] = []) => (unknown = operands[0] ?? ''));

    const given = rest.slice(1);
    if (help) given.splice(given.length > 0 && !given[0]!.startsWith('-') ? 1 : 0, 0, '--help');
    const args = name === 'vm' ? protectExecArgs(given) : given;
    const hasSubcommands = group.commands.length > 0;
    if (
      hasSubcommands &&
      (args.length === 0 || args.every((a) => a.startsWith('-') && a !== '--help' && a !== '-h'))
    ) {
      io.stdout.write(group.helpInformation());
      return args.length === 0 ? 0 : 2;
    }
    await group.parseAsync(['node', 'fastvm', ...args]);
    if (unknown !== undefined)
      throw new CliError(
        `unknown command 'fastvm ${name} ${unknown}' (see 'fastvm ${name} --help')`,
        2,
      );
    return code;
  } catch (err) {
    return report(err, io);
  } finally {
    await ctx?.close().catch(() => undefined);
  }
}

function report(err: unknown, io: IO): number {
  const e = err as { code?: unknown; exitCode?: unknown };
  if (typeof e?.code === 'string' && e.code.startsWith('commander.')) {
    // Commander printed its own message (or the help) already.
    return typeof e.exitCode === 'number' ? e.exitCode : 1;
  }
  if (err instanceof CliError) {
    io.stderr.write(`Error: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof FastVMError) {
    io.stderr.write(`Error: ${err.message}\n`);
    return 1;
  }
  const message = err instanceof Error ? err.message : String(err);
  io.stderr.write(`Error: ${message}\n`);
  if (io.env['FASTVM_DEBUG'] && err instanceof Error && err.stack)
    io.stderr.write(`${err.stack}\n`);
  return 1;
}

/** The process's own streams and environment. */
export function processIO(): IO {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    stdin: process.stdin,
    env: process.env,
    prompt: (question) =>
      new Promise((resolve) => {
        const rl = createInterface({ input: process.stdin, output: process.stderr });
        rl.question(question, (answer) => {
          rl.close();
          resolve(answer);
        });
      }),
  };
}

/** Entry point used by `bin/fastvm.js`. */
export function run(argv: string[]): Promise<number> {
  // `fastvm vm list | head -1`: a closed pipe ends the output quietly instead of crashing.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  return main(argv, processIO());
}
