// fastvm vm launch: launch a VM and wait until it is running.
import type { Command } from 'commander';
import type { FirewallPolicy, VMTtl, VolumeMount } from 'fastvm';
import { parseVolumeSpec } from '../volume/attach.js';
import {
  collect,
  newCommand,
  onRun,
  policyFrom,
  positiveInt,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { json, vmToJson } from '../../output.js';
import { printVm, spinner } from '../../views.js';
import { parsePublish } from '../service/add.js';
import { serviceTable, serviceToJson } from '../service/list.js';
import { parseTtl } from './ttl.js';

export interface VmLaunchOptions extends CommandBase {
  /** Machine type, e.g. `c1m2`. */
  machine: string;
  name: string | undefined;
  diskGib: number | undefined;
  firewall: FirewallPolicy | undefined;
  ttl: VMTtl | undefined;
  /** Seconds to wait for `running` (the SDK's default when undefined). */
  waitSec: number | undefined;
  /** Ports to publish through the service proxy once it runs (`--publish PORT[:NAME]`). */
  publish: Array<{ port: number; name: string }>;
  /** Volumes to attach (`--volume NAME:/PATH[:ro]`). */
  volumes?: VolumeMount[];
}

export function newVmLaunchCommand(f: Factory, runF: RunF<VmLaunchOptions> = vmLaunchRun): Command {
  const cmd = newCommand(f, 'launch', 'Launch a VM and wait until it is running')
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
    .option(
      '-p, --publish <port[:name]>',
      'publish a port through the service proxy once running, e.g. 8000:web (repeatable)',
      collect,
    )
    .option(
      '-v, --volume <volume:path[:ro]>',
      'attach a volume at a path under /mnt/ or /data/, e.g. data:/data or data:/data:ro (repeatable)',
      collect,
    );
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{
      machine: string;
      name?: string;
      diskGib?: string;
      mode?: string;
      rule?: string[];
      timeout?: string;
      ttl?: string;
      publish?: string[];
      volume?: string[];
    }>();
    return runF({
      ...base,
      machine: o.machine,
      name: o.name,
      ttl: o.ttl === undefined ? undefined : parseTtl(o.ttl),
      diskGib: positiveInt(o.diskGib, '--disk-gib'),
      firewall: policyFrom(o.mode, o.rule),
      waitSec: positiveInt(o.timeout, '--timeout'),
      publish: (o.publish ?? []).map((spec) => parsePublish(spec)),
      volumes: (o.volume ?? []).map(parseVolumeSpec),
    });
  });
}

export async function vmLaunchRun(o: VmLaunchOptions): Promise<number> {
  const client = await o.client();
  const spin = spinner(o).start(`Launching ${o.machine} VM${o.name ? ` ${o.name}` : ''}…`);
  try {
    const vm = await client.launch({
      machine: o.machine,
      name: o.name,
      diskGib: o.diskGib,
      firewall: o.firewall,
      ttl: o.ttl,
      ...(o.volumes?.length ? { volumes: o.volumes } : {}),
      timeout: o.waitSec === undefined ? undefined : o.waitSec * 1000,
    });
    spin.stop(`✓ VM ${vm.name} is running (${spin.elapsed})`);
    const services = [];
    for (const p of o.publish ?? [])
      services.push(await client.publishService(vm.id, p.name, p.port));
    if (services.length > 0 && o.json) {
      o.io.stdout.write(json({ ...vmToJson(vm), services: services.map(serviceToJson) }));
      return 0;
    }
    printVm(o, vm);
    if (services.length > 0) o.io.stdout.write('\n' + serviceTable(services));
  } finally {
    spin.stop();
  }
  return 0;
}
