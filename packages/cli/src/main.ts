// Entry point of the `fastvm` command: builds the command tree (commands/root.ts) over a Factory,
// parses the arguments with commander and turns errors into messages and exit codes.
import { CommanderError } from 'commander';
import { isCommand, newRootCommand } from './commands/root.js';
import { CliError } from './errors.js';
import { Factory, type IO } from './factory.js';

export type { IO } from './factory.js';

/**
 * Runs the CLI with `argv` (without node and script) and returns the exit code.
 *
 * @param argv - Arguments after `fastvm`.
 * @param io - Streams and environment, or a Factory built over them (tests: a fake client).
 */
export async function main(argv: string[], io: IO | Factory): Promise<number> {
  const f = io instanceof Factory ? io : new Factory(io);
  try {
    const { args, command } = commandOf(argv);
    if (command !== undefined && !isCommand(command))
      throw new CliError(`unknown command '${command}' (see 'fastvm --help')`, 2);
    await newRootCommand(f, command === undefined ? [] : [command]).parseAsync(args, {
      from: 'user',
    });
    return f.exitCode;
  } catch (err) {
    return report(err, f);
  } finally {
    await f.close().catch(() => undefined);
  }
}

/**
 * Finds the top-level command (`vm` in `fastvm --json vm list`, `help vm`: `vm`) so that only it is
 * built, and moves a help flag given before it after it: `fastvm --help vm` shows the help of
 * `vm`, like `fastvm vm --help`.
 */
function commandOf(argv: string[]): { args: string[]; command: string | undefined } {
  let help = -1;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '-h' || a === '--help') {
      if (help < 0) help = i;
    } else if (a === '--api-key' || a === '--base-url') {
      i++;
    } else if (!a.startsWith('-')) {
      if (a === 'help')
        return { args: argv, command: argv.slice(i + 1).find((x) => !x.startsWith('-')) };
      if (help < 0) return { args: argv, command: a };
      const args = argv.filter((_, j) => j !== help);
      args.splice(i, 0, '--help');
      return { args, command: a };
    }
  }
  return { args: argv, command: undefined };
}

function report(err: unknown, f: Factory): number {
  const { io } = f;
  // Commander printed the help, the version or its own (formatted) message already.
  if (err instanceof CommanderError) return err.exitCode;
  if (err instanceof CliError) {
    io.stderr.write(`Error: ${err.message}\n`);
    return err.exitCode;
  }
  const sdk = f.loadedSdk;
  if (sdk && err instanceof sdk.FastVMError) {
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
    prompt: async (question) => {
      const { createInterface } = await import('node:readline');
      return new Promise((resolve) => {
        const rl = createInterface({ input: process.stdin, output: process.stderr });
        rl.question(question, (answer) => {
          rl.close();
          resolve(answer);
        });
      });
    },
  };
}

/** Entry point used by `bin/fastvm.cjs`. */
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
