/**
 * A FastVM server in a process of its own (`tsx packages/server/src/main.ts serve`), so that the
 * chaos suite can `kill -9` it for real and start it again on the same data dir.
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const MAIN = path.resolve(import.meta.dirname, '..', 'packages', 'server', 'src', 'main.ts');

/** A free TCP port on loopback (kept for every start, so URLs stay valid across restarts). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

export class ServerProcess {
  readonly url: string;
  #child: ChildProcess | undefined;
  #starts = 0;

  constructor(
    readonly dataDir: string,
    readonly port: number,
    readonly env: Record<string, string>,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Starts the server and resolves once `/readyz` answers (recovery is done by then). */
  async start(timeoutMs = 180_000): Promise<void> {
    const log = fs.openSync(path.join(this.dataDir, `server-${++this.#starts}.log`), 'a');
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', MAIN, 'serve', '--data-dir', this.dataDir, '--port', String(this.port)],
      {
        cwd: path.resolve(import.meta.dirname, '..'),
        env: { ...process.env, FASTVM_LOG_LEVEL: 'info', ...this.env },
        stdio: ['ignore', log, log],
      },
    );
    fs.closeSync(log);
    this.#child = child;
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code, signal) =>
        reject(new Error(`server exited during start (${code ?? signal}); see ${this.lastLog()}`)),
      ),
    );
    exited.catch(() => {});
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ok = await Promise.race([
        fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(2000) }).then(
          (r) => r.ok,
          () => false,
        ),
        exited,
      ]);
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`server did not get ready; see ${this.lastLog()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** `kill -9`: no shutdown code runs. */
  async kill9(): Promise<void> {
    await this.#signal('SIGKILL');
  }

  /** Graceful stop (SIGTERM): drains requests, VMs keep running, networking is kept for them. */
  async stop(): Promise<void> {
    await this.#signal('SIGTERM');
  }

  lastLog(): string {
    return path.join(this.dataDir, `server-${this.#starts}.log`);
  }

  async #signal(sig: NodeJS.Signals): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill(sig);
    await gone;
    this.#child = undefined;
  }
}
