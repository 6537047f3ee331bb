/**
 * FakePty: the `FakeRuntime`'s stand-in for a shell on a guest pseudo-terminal (the console).
 * It imitates what a client sees: a prompt, echo of typed input with `\r\n` line ends, backspace,
 * Ctrl-C (`^C` and a new prompt) and Ctrl-D on an empty line (exit), and understands `tty`,
 * `stty size`, `echo ...`, `hostname` and `exit [N]`. Output is delivered asynchronously, held
 * back while paused, and a hangup (`close`) ends it like SIGHUP (exit 129).
 * @module
 */
import type { PtyExit, PtyRequest, PtySession } from '@fastvm/runtime';

const PROMPT = 'fake$ ';
const SIGHUP = 1;
const SIGKILL = 9;

/** A fake interactive shell on a fake terminal. */
export class FakePty implements PtySession {
  readonly pid: number;
  readonly exited: Promise<PtyExit>;
  /** Every byte typed so far (for assertions). */
  typed = '';
  /** Window sizes set so far, initial one first. */
  readonly sizes: Array<{ rows: number; cols: number }> = [];

  #rows: number;
  #cols: number;
  #line = '';
  #paused = false;
  #held: Buffer[] = [];
  #done = false;
  #started = Date.now();
  #resolve!: (e: PtyExit) => void;
  #reject!: (err: Error) => void;
  readonly #onData: (chunk: Buffer) => void;

  constructor(
    readonly request: PtyRequest,
    pid: number,
    private readonly hostname: string,
  ) {
    this.pid = pid;
    this.#rows = request.rows;
    this.#cols = request.cols;
    this.sizes.push({ rows: request.rows, cols: request.cols });
    this.#onData = request.onData;
    this.exited = new Promise<PtyExit>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.exited.catch(() => {});
    this.#emit(PROMPT);
  }

  /** Whether the shell has exited (or was dropped). */
  get done(): boolean {
    return this.#done;
  }

  write(data: Uint8Array | string): void {
    if (this.#done) return;
    const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8');
    this.typed += text;
    for (const ch of text) {
      if (this.#done) return;
      this.#key(ch);
    }
  }

  resize(rows: number, cols: number): void {
    if (this.#done) return;
    this.#rows = rows;
    this.#cols = cols;
    this.sizes.push({ rows, cols });
  }

  pauseOutput(): void {
    this.#paused = true;
  }

  resumeOutput(): void {
    this.#paused = false;
    for (const chunk of this.#held.splice(0)) this.#deliver(chunk);
  }

  close(): void {
    this.#exit(128 + SIGHUP, SIGHUP);
  }

  /** Test control: kill it (exit 137) as if by SIGKILL. */
  kill(): void {
    this.#exit(128 + SIGKILL, SIGKILL);
  }

  /** Test control: its VM went away; `exited` rejects like a lost agent connection. */
  drop(err: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#reject(err);
  }

  #key(ch: string): void {
    switch (ch) {
      case '\r':
      case '\n': {
        this.#emit('\r\n');
        const line = this.#line;
        this.#line = '';
        this.#run(line.trim());
        break;
      }
      case '\x7f':
      case '\b':
        if (this.#line.length > 0) {
          this.#line = this.#line.slice(0, -1);
          this.#emit('\b \b');
        }
        break;
      case '\x03':
        this.#line = '';
        this.#emit(`^C\r\n${PROMPT}`);
        break;
      case '\x04':
        if (this.#line === '') {
          this.#emit('exit\r\n');
          this.#exit(0, 0);
        }
        break;
      default:
        this.#line += ch;
        this.#emit(ch);
    }
  }

  #run(line: string): void {
    const [cmd, ...args] = line.split(/\s+/);
    let out = '';
    switch (cmd) {
      case '':
      case undefined:
        break;
      case 'tty':
        out = '/dev/pts/0\r\n';
        break;
      case 'stty':
        out = args[0] === 'size' ? `${this.#rows} ${this.#cols}\r\n` : '';
        break;
      case 'echo':
        out = `${args.join(' ')}\r\n`;
        break;
      case 'hostname':
        out = `${this.hostname}\r\n`;
        break;
      case 'exit': {
        const code = Number(args[0] ?? 0);
        this.#emit('logout\r\n');
        this.#exit(Number.isInteger(code) ? code & 0xff : 2, 0);
        return;
      }
      default:
        out = `fake-shell: ${cmd}: command not found\r\n`;
    }
    this.#emit(out + PROMPT);
  }

  #emit(text: string): void {
    if (text === '') return;
    const chunk = Buffer.from(text, 'utf8');
    // Asynchronous like a real terminal, and never before the caller has the session.
    setImmediate(() => {
      if (this.#paused) this.#held.push(chunk);
      else this.#deliver(chunk);
    });
  }

  #deliver(chunk: Buffer): void {
    try {
      this.#onData(chunk);
    } catch {
      // a throwing consumer must not break the fake
    }
  }

  #exit(exitCode: number, signal: number): void {
    if (this.#done) return;
    this.#done = true;
    const exit: PtyExit = { exitCode, signal, durationMs: Date.now() - this.#started };
    // After the output already queued, as the agent drains the pty before EXIT.
    setImmediate(() => setImmediate(() => this.#resolve(exit)));
  }
}
