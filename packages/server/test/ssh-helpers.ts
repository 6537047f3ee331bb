/**
 * Helpers for the SSH gateway tests: client keys made by `ssh-keygen`, and Debian's OpenSSH
 * client run as a child process against the gateway on 127.0.0.1.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface SshResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A scratch directory with client keys and a known_hosts file. */
export class SshScratch {
  private constructor(readonly dir: string) {}

  static async create(): Promise<SshScratch> {
    return new SshScratch(await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-ssh-test-')));
  }

  get knownHosts(): string {
    return path.join(this.dir, 'known_hosts');
  }

  /** Generates `<dir>/<name>` (ed25519 unless `type` says otherwise); returns the public key line. */
  async key(name: string, type = 'ed25519'): Promise<{ file: string; publicKey: string }> {
    const file = path.join(this.dir, name);
    await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', `test-${name}`, '-f', file]);
    return { file, publicKey: (await fs.readFile(`${file}.pub`, 'utf8')).trim() };
  }

  /**
   * OpenSSH options for a test login: only `identity`, no agent, no config file, a private
   * known_hosts (new host keys added; with `strict`, a changed or unknown one refuses).
   */
  options(port: number, identity: string, strict = false): string[] {
    return [
      '-F',
      '/dev/null',
      '-p',
      String(port),
      '-i',
      identity,
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'IdentityAgent=none',
      '-o',
      'BatchMode=yes',
      '-o',
      `StrictHostKeyChecking=${strict ? 'yes' : 'no'}`,
      '-o',
      `UserKnownHostsFile=${this.knownHosts}`,
      '-o',
      'LogLevel=ERROR',
      '-o',
      'ConnectTimeout=20',
    ];
  }

  async remove(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

/** Runs `ssh <args>` with `input` on stdin (closed after it); resolves with the exit status. */
export function ssh(args: string[], input = '', timeoutMs = 60_000): Promise<SshResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
    child.stdin.end(input);
  });
}

/** `ssh-keygen -lf <file>`'s `SHA256:…` fingerprint of a public key file. */
export async function fingerprintOf(file: string): Promise<string> {
  const { stdout } = await run('ssh-keygen', ['-lf', file]);
  return stdout.split(/\s+/)[1]!;
}
