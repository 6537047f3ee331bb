// fastvm: the root command, its help text and the version.
import { createRequire } from 'node:module';
import type { Command } from 'commander';
import { addGlobalOptions, newCommand } from '../cmdutil.js';
import { CliError } from '../errors.js';
import type { Factory } from '../factory.js';
import { VERSION } from '../version.js';
import { newBuildCommand } from './build.js';
import { newConfigCommand } from './config/config.js';
import { newImageCommand } from './image/image.js';
import { newCpCommand } from './cp.js';
import { newFirewallCommand } from './firewall/firewall.js';
import { newQuotaCommand } from './quota.js';
import { newServiceCommand } from './service/service.js';
import { newSnapshotCommand } from './snapshot/snapshot.js';
import { newSshKeyCommand } from './ssh-key/ssh-key.js';
import { newConsoleCommand } from './vm/console.js';
import { newVmCommand } from './vm/vm.js';
import { newVolumeCommand } from './volume/volume.js';

const HELP = `FastVM command-line tool: launch, snapshot, restore and run commands in microVMs.

Usage: fastvm [global options] <command> <subcommand> [options]

Commands:
  vm        launch | list | get | rename | rm | exec | console | ssh | pause | resume | ttl
  cp        copy files and directories: cp <local> <vm>:<path>, cp <vm>:<path> <local>
  console   an interactive shell in a VM (same as vm console; Ctrl-] disconnects)
  snapshot  create | list | get | rename | rm | restore | fork | tree
  firewall  get | set | patch | egress
  service   add | ls | rm   (publish a VM's HTTP ports through the proxy)
  volume    create | ls | rm | resize | attach | detach   (persistent disks)
  build     build a snapshot from a Dockerfile: build -f Dockerfile [-t name] [--build-arg K=V] DIR
  image     import   (an image as a snapshot: image import debian:bookworm -n base)
  quota     show quota limits and usage
  ssh-key   add | list | rm   (keys for ssh through the SSH gateway: fastvm vm ssh <vm>)
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
  fastvm ssh-key add ~/.ssh/id_ed25519.pub && fastvm vm ssh dev -- uname -a
  fastvm vm launch -n tmp --ttl 30m:delete
  fastvm cp ./src dev:/root/src && fastvm cp dev:/root/out.tar .
  fastvm snapshot create dev -n base && fastvm snapshot restore base -n dev2
  fastvm snapshot fork base -n 10 --prefix worker && fastvm snapshot tree base
  fastvm firewall set dev --mode restricted -r tcp:22 -r tcp:8080-8090@2001:db8::/32
  fastvm service add dev 8000:web && fastvm service ls dev
  fastvm volume create data --size 20 && fastvm vm launch -n job --volume data:/data
  fastvm volume attach dev data:/mnt/data:ro && fastvm volume detach dev data
  fastvm build -t app --build-arg VERSION=2 . && fastvm snapshot restore app -n app1
  fastvm vm list --json | jq -r '.[].id'

Config file: $XDG_CONFIG_HOME/fastvm/config.json (default ~/.config/fastvm/config.json).
Run 'fastvm <command> --help' for details.
`;

/** `fastvm 0.1.0 (sdk 0.1.0)`; the SDK's version from its package.json (loading it would cost more). */
export function version(): string {
  const sdk = createRequire(import.meta.url)('fastvm/package.json') as { version: string };
  return `fastvm ${VERSION} (sdk ${sdk.version})`;
}

/** The top-level commands, built on demand. */
const COMMANDS: Record<string, (f: Factory) => Command> = {
  vm: newVmCommand,
  cp: newCpCommand,
  console: newConsoleCommand,
  snapshot: newSnapshotCommand,
  firewall: newFirewallCommand,
  service: newServiceCommand,
  quota: newQuotaCommand,
  'ssh-key': newSshKeyCommand,
  volume: newVolumeCommand,
  build: newBuildCommand,
  image: newImageCommand,
  config: newConfigCommand,
};

/** Whether `name` is a top-level command. */
export function isCommand(name: string): boolean {
  return Object.hasOwn(COMMANDS, name);
}

/**
 * The `fastvm` command with the top-level commands `names` (default: all) under it. main() builds
 * only the one the arguments name, or none for `--version` and `--help`: building the other ~30
 * commands would cost start-up time for nothing (the root's help is the text above).
 */
export function newRootCommand(
  f: Factory,
  names: readonly string[] = Object.keys(COMMANDS),
): Command {
  const root = addGlobalOptions(newCommand(f, 'fastvm', ''))
    .version(version(), '-V, --version', 'print the version')
    .enablePositionalOptions()
    .configureHelp({ formatHelp: () => HELP });
  for (const name of names) root.addCommand(COMMANDS[name]!(f));
  return root
    .helpCommand(true)
    .allowExcessArguments()
    .action((_opts: unknown, c: Command) => {
      const [name] = c.args;
      if (name === undefined) {
        c.outputHelp();
        return;
      }
      throw new CliError(`unknown command '${name}' (see 'fastvm --help')`, 2);
    });
}
