// fastvm vm ssh <vm> [-- command...]: the system `ssh` to the VM through the server's SSH gateway.
import type { Command } from 'commander';
import {
  collect,
  newCommand,
  onRun,
  positiveInt,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';

/** The gateway's default port (the server's `FASTVM_SSH_PORT`). */
export const DEFAULT_SSH_PORT = 2222;

export interface VmSshOptions extends CommandBase {
  vm: string;
  /** The remote command (words after `--`); empty: an interactive shell. */
  command: string[];
  /** `--port`, else `FASTVM_SSH_PORT`, else 2222. */
  port: number | undefined;
  /** `-i`: the private key ssh uses. */
  identity: string | undefined;
  /** `-o`: extra ssh options (`StrictHostKeyChecking=no`, …). */
  sshOptions: string[];
  /** Runs ssh with this argv and resolves with its exit status (tests replace it). */
  exec?: (argv: string[]) => Promise<number>;
}

export function newVmSshCommand(f: Factory, runF: RunF<VmSshOptions> = vmSshRun): Command {
  const cmd = newCommand(
    f,
    'ssh <vm> [command...]',
    "Open a shell in a VM with your system's ssh, through the server's SSH gateway (add your key\n" +
      "first: fastvm ssh-key add ~/.ssh/id_ed25519.pub); with '-- command' run it and exit with its status",
  )
    .option(
      '-p, --port <port>',
      `SSH gateway port (else FASTVM_SSH_PORT, else ${DEFAULT_SSH_PORT})`,
    )
    .option('-i, --identity <file>', 'private key for ssh to use')
    .option(
      '-o, --ssh-option <option>',
      'an ssh -o option, e.g. StrictHostKeyChecking=accept-new',
      collect,
    );
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ port?: string; identity?: string; sshOption?: string[] }>();
    const words = (c.processedArgs[1] as string[] | undefined) ?? [];
    return runF({
      ...base,
      vm: c.processedArgs[0] as string,
      command: words[0] === '--' ? words.slice(1) : words,
      port: portOf(o.port, '--port'),
      identity: o.identity,
      sshOptions: o.sshOption ?? [],
    });
  });
}

function portOf(text: string | undefined, what: string): number | undefined {
  const port = positiveInt(text, what);
  if (port !== undefined && port > 65535) throw new CliError(`${what} must be a port number`);
  return port;
}

/** The gateway host: the API base URL's host name (brackets of an IPv6 literal removed). */
export function gatewayHost(baseUrl: string): string {
  let host: string;
  try {
    host = new URL(baseUrl).hostname;
  } catch {
    throw new CliError(`cannot tell the SSH gateway's host from the base URL ${baseUrl}`);
  }
  return host.replace(/^\[(.*)\]$/, '$1');
}

/** ssh's argv: options, `<vm id>@<host>`, then the command (ssh passes it to the VM's shell). */
export function sshArgv(o: VmSshOptions, vmId: string, host: string): string[] {
  const port = o.port ?? portOf(o.io.env['FASTVM_SSH_PORT'], 'FASTVM_SSH_PORT') ?? DEFAULT_SSH_PORT;
  const argv = ['-p', String(port)];
  if (o.identity !== undefined) argv.push('-i', o.identity);
  for (const opt of o.sshOptions) argv.push('-o', opt);
  argv.push(`${vmId}@${host}`);
  if (o.command.length > 0) argv.push('--', ...o.command);
  return argv;
}

export async function vmSshRun(o: VmSshOptions): Promise<number> {
  const client = await o.client();
  const vm = await withRef(o, 'vm', o.vm, (id) => client.get(id));
  return (o.exec ?? runSsh)(sshArgv(o, vm.id, gatewayHost(client.baseUrl)));
}

/** Runs the system ssh on this terminal; resolves with its exit status (128 + signal if killed). */
async function runSsh(argv: string[]): Promise<number> {
  // Loaded here: every `fastvm vm …` command builds this one (start-up time).
  const [{ spawn }, os] = await Promise.all([import('node:child_process'), import('node:os')]);
  const signalNumber = (signal: NodeJS.Signals): number => os.constants.signals[signal] ?? 1;
  // ssh decides what Ctrl-C means (on a terminal it goes to the VM); this process waits.
  const ignore = (): void => {};
  process.on('SIGINT', ignore);
  return new Promise<number>((resolve, reject) => {
    const child = spawn('ssh', argv, { stdio: 'inherit' });
    child.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'ENOENT'
          ? new CliError(
              'ssh not found: install the OpenSSH client (apt-get install openssh-client)',
            )
          : err,
      ),
    );
    child.on('exit', (code, signal) => {
      resolve(code ?? 128 + (signal ? signalNumber(signal) : 0));
    });
  }).finally(() => process.off('SIGINT', ignore));
}
