/**
 * FakeProcess: the `FakeRuntime`'s stand-in for a command with open stdin (`openProcess`). Input
 * is collected until EOF, then the command runs through the FakeRuntime's `exec` (its mini
 * shell) with that input, streaming stdout and stderr apart. `kill` before or during the run ends
 * it with 128 + signal.
 * @module
 */
import type { ExecResult, ProcessSession, PtyExit } from '@fastvm/runtime';

/** Runs the command with the collected input; aborting `signal` kills it. */
export type FakeRun = (stdin: Buffer, signal: AbortSignal) => Promise<ExecResult>;

export class FakeProcess implements ProcessSession {
  readonly pid: number;
  readonly exited: Promise<PtyExit>;
  /** Input written so far. */
  readonly input: Buffer[] = [];
  #ended = false;
  #done = false;
  #signal = 0;
  readonly #abort = new AbortController();
  readonly #started = Date.now();
  #resolve!: (e: PtyExit) => void;
  #reject!: (err: Error) => void;

  constructor(
    pid: number,
    private readonly run: FakeRun,
  ) {
    this.pid = pid;
    this.exited = new Promise<PtyExit>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.exited.catch(() => {});
  }

  write(data: Uint8Array | string): boolean {
    if (!this.#ended) this.input.push(Buffer.from(data));
    return true;
  }

  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.run(Buffer.concat(this.input), this.#abort.signal).then(
      (r) => this.#finish(r.exitCode, 0),
      (err: Error) => {
        if (this.#signal) this.#finish(128 + this.#signal, this.#signal);
        else this.drop(err);
      },
    );
  }

  kill(signal = 9): void {
    if (this.#done) return;
    this.#signal = signal;
    if (!this.#ended) {
      this.#ended = true;
      this.#finish(128 + signal, signal);
    } else {
      this.#abort.abort(new Error(`killed by signal ${signal}`));
    }
  }

  pauseOutput(): void {}

  resumeOutput(): void {}

  close(): void {
    if (!this.#ended) this.kill(1);
    else this.kill(9);
  }

  /** The VM went away. */
  drop(err: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#reject(err);
  }

  #finish(exitCode: number, signal: number): void {
    if (this.#done) return;
    this.#done = true;
    this.#resolve({ exitCode, signal, durationMs: Date.now() - this.#started });
  }
}
