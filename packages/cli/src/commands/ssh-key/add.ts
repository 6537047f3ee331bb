// fastvm ssh-key add <file|-> [--name <name>]
import fs from 'node:fs/promises';
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json, keyValues } from '../../output.js';
import { sshKeyToJson } from './list.js';

export interface SshKeyAddOptions extends CommandBase {
  /** A public key file (`~/.ssh/id_ed25519.pub`), or `-` for standard input. */
  file: string;
  name: string | undefined;
}

export function newSshKeyAddCommand(
  f: Factory,
  runF: RunF<SshKeyAddOptions> = sshKeyAddRun,
): Command {
  const cmd = newCommand(
    f,
    'add <file>',
    "Add an SSH public key (a .pub file, or '-' for standard input)",
  ).option('-n, --name <name>', 'a label for the key');
  return onRun(f, cmd, (c, base) =>
    runF({ ...base, file: c.args[0]!, name: c.opts<{ name?: string }>().name }),
  );
}

export async function sshKeyAddRun(o: SshKeyAddOptions): Promise<number> {
  const text = o.file === '-' ? await readAll(o.io.stdin) : await readKeyFile(o.file);
  if (/PRIVATE KEY/.test(text)) {
    throw new CliError(`${o.file} is a private key: give the public one (the .pub file)`);
  }
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '' && !l.startsWith('#'));
  if (lines.length !== 1) {
    throw new CliError(
      lines.length === 0
        ? `no public key in ${o.file === '-' ? 'standard input' : o.file}`
        : `${o.file === '-' ? 'standard input' : o.file} holds ${lines.length} keys; add one at a time`,
    );
  }
  const client = await o.client();
  const key = await client.addSshKey(lines[0]!, o.name !== undefined ? { name: o.name } : {});
  if (o.json) o.io.stdout.write(json(sshKeyToJson(key)));
  else
    o.io.stdout.write(
      keyValues([
        ['Added', key.fingerprint],
        ['Name', key.name ?? '-'],
      ]),
    );
  return 0;
}

async function readKeyFile(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new CliError(
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
}

/** All of standard input as text (a key is small: at most 64 KiB is read). */
function readAll(stdin: unknown): Promise<string> {
  const s = stdin as NodeJS.ReadableStream;
  if (typeof s.on !== 'function') return Promise.resolve('');
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    s.on('data', (c: Buffer | string) => {
      const b = Buffer.from(c);
      size += b.length;
      if (size > 64 * 1024) reject(new CliError('standard input is too large for a public key'));
      chunks.push(b);
    });
    s.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    s.on('error', reject);
  });
}
