// fastvm volume attach <vm> <volume>:<path>[:ro] ; fastvm volume detach <vm> <volume>
import type { Command } from 'commander';
import type { VolumeAttachment, VolumeMount } from 'fastvm';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json, keyValues } from '../../output.js';

/** `name:/data[:ro]` → a volume mount (the `--volume` syntax of `vm launch` too). */
export function parseVolumeSpec(spec: string): VolumeMount {
  const m = /^([^:]+):(\/[^:]+)(?::(ro|rw))?$/.exec(spec);
  if (!m) {
    throw new CliError(`invalid volume ${JSON.stringify(spec)}: expected VOLUME:/PATH[:ro]`);
  }
  return { volume: m[1]!, mountPath: m[2]!, ...(m[3] ? { readOnly: m[3] === 'ro' } : {}) };
}

export function attachmentToJson(a: VolumeAttachment): Record<string, unknown> {
  return {
    volumeId: a.volumeId,
    mountPath: a.mountPath,
    mountStatus: a.mountStatus,
    readOnly: a.readOnly,
    ...(a.statusMessage !== null ? { statusMessage: a.statusMessage } : {}),
    ...(a.vmId !== undefined ? { vmId: a.vmId } : {}),
  };
}

export interface VolumeAttachOptions extends CommandBase {
  vm: string;
  mount: VolumeMount;
}

export function newVolumeAttachCommand(
  f: Factory,
  runF: RunF<VolumeAttachOptions> = volumeAttachRun,
): Command {
  const cmd = newCommand(
    f,
    'attach <vm> <volume:path[:ro]>',
    'Attach a volume to a VM and mount it (under /mnt/ or /data/), e.g. data:/data/x:ro',
  );
  return onRun(f, cmd, (c, base) =>
    runF({ ...base, vm: c.args[0]!, mount: parseVolumeSpec(c.args[1]!) }),
  );
}

export async function volumeAttachRun(o: VolumeAttachOptions): Promise<number> {
  const client = await o.client();
  const a = await client.attachVolume(o.vm, o.mount.volume, o.mount.mountPath, {
    ...(o.mount.readOnly !== undefined ? { readOnly: o.mount.readOnly } : {}),
  });
  if (o.json) o.io.stdout.write(json(attachmentToJson(a)));
  else
    o.io.stdout.write(
      keyValues([
        ['VOLUME', a.volumeId],
        ['PATH', a.mountPath],
        ['STATUS', a.mountStatus],
        ['MODE', a.readOnly ? 'read-only' : 'read-write'],
      ]),
    );
  return 0;
}

export interface VolumeDetachOptions extends CommandBase {
  vm: string;
  volume: string;
}

export function newVolumeDetachCommand(
  f: Factory,
  runF: RunF<VolumeDetachOptions> = volumeDetachRun,
): Command {
  const cmd = newCommand(f, 'detach <vm> <volume>', 'Unmount a volume in the VM and detach it');
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]!, volume: c.args[1]! }));
}

export async function volumeDetachRun(o: VolumeDetachOptions): Promise<number> {
  const client = await o.client();
  await client.detachVolume(o.vm, o.volume);
  o.io.stdout.write(o.json ? json({ detached: true }) : `Detached ${o.volume} from ${o.vm}\n`);
  return 0;
}
