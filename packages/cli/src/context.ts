// What every command needs: IO streams, global flags, the resolved settings and a lazily created
// SDK client (closed once the command finishes).
import { FastVM, NotFoundError } from 'fastvm';
import { readConfig, resolveSettings } from './config.js';
import { CliError } from './errors.js';
import { colorEnabled, palette, Spinner, type Out } from './output.js';

/** Streams and environment the CLI runs with (process streams, or test doubles). */
export interface IO {
  stdout: Out;
  stderr: Out;
  stdin: { isTTY?: boolean | undefined };
  env: NodeJS.ProcessEnv;
  /** Reads one line from the terminal (confirmation prompts). */
  prompt?: (question: string) => Promise<string>;
}

/** Options accepted before or after any command. */
export interface GlobalOptions {
  json?: boolean | undefined;
  apiKey?: string | undefined;
  baseUrl?: string | undefined;
}

/** Per-invocation state shared by the commands. */
export class Context {
  readonly io: IO;
  readonly #before: GlobalOptions;
  #after: () => GlobalOptions = () => ({});
  #client: FastVM | undefined;

  /**
   * @param io - Streams and environment.
   * @param globals - Global flags given before the command name.
   */
  constructor(io: IO, globals: GlobalOptions) {
    this.io = io;
    this.#before = globals;
  }

  /** Supplies the global flags given after the command name (parsed by commander). */
  set lateGlobals(source: () => GlobalOptions) {
    this.#after = source;
  }

  /** Global flags; later ones win. */
  get globals(): GlobalOptions {
    const after = this.#after();
    return {
      json: after.json ?? this.#before.json,
      apiKey: after.apiKey ?? this.#before.apiKey,
      baseUrl: after.baseUrl ?? this.#before.baseUrl,
    };
  }

  /** Whether `--json` was given. */
  get json(): boolean {
    return this.globals.json === true;
  }

  /** Colours for stdout. */
  get colors(): ReturnType<typeof palette> {
    return palette(colorEnabled(this.io.stdout, this.io.env));
  }

  /** The SDK client, created on first use from flags > env > config file. */
  client(): FastVM {
    if (this.#client) return this.#client;
    const settings = resolveSettings(this.globals, this.io.env, readConfig(this.io.env));
    if (!settings.apiKey) {
      throw new CliError(
        'no API key: pass --api-key, set FASTVM_API_KEY, or run `fastvm config set api-key <key>`',
      );
    }
    this.#client = new FastVM({ apiKey: settings.apiKey, baseUrl: settings.baseUrl });
    return this.#client;
  }

  /** A spinner on stderr (drawn only when stderr is a TTY and output is not JSON). */
  spinner(): Spinner {
    return new Spinner(this.json ? { write: () => true, isTTY: false } : this.io.stderr);
  }

  /** Writes to stdout. */
  out(text: string | Uint8Array): void {
    this.io.stdout.write(text);
  }

  /** Writes to stderr. */
  err(text: string | Uint8Array): void {
    this.io.stderr.write(text);
  }

  /**
   * Runs `fn` with a VM or snapshot reference as given (the server resolves ids and names); on 404
   * resolves it client-side (exact id, exact name, or unique id prefix) and tries once more.
   */
  async withRef<T>(
    kind: 'vm' | 'snapshot',
    ref: string,
    fn: (id: string) => Promise<T>,
  ): Promise<T> {
    try {
      return await fn(ref);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      const id = await this.resolve(kind, ref);
      if (id === undefined || id === ref) throw err;
      return fn(id);
    }
  }

  /** Finds the id of a VM or snapshot by id, name or unique id prefix via the list endpoint. */
  async resolve(kind: 'vm' | 'snapshot', ref: string): Promise<string | undefined> {
    const items: Array<{ id: string; name: string }> =
      kind === 'vm' ? await this.client().list() : await this.client().listSnapshots();
    const exact = items.find((i) => i.id === ref);
    if (exact) return exact.id;
    for (const candidates of [
      items.filter((i) => i.name === ref),
      items.filter((i) => i.id.startsWith(ref)),
    ]) {
      if (candidates.length === 1) return candidates[0]!.id;
      if (candidates.length > 1) {
        const what = kind === 'vm' ? 'VMs' : 'snapshots';
        throw new CliError(
          `'${ref}' matches ${candidates.length} ${what} (${candidates.map((c) => c.id).join(', ')}); use the id`,
        );
      }
    }
    return undefined;
  }

  /** Asks for confirmation on a terminal; non-interactive runs proceed. */
  async confirm(question: string): Promise<boolean> {
    if (!this.io.stdin.isTTY || !this.io.stderr.isTTY || !this.io.prompt) return true;
    const answer = await this.io.prompt(`${question} [y/N] `);
    return /^y(es)?$/i.test(answer.trim());
  }

  /** Closes the client, if one was created. */
  async close(): Promise<void> {
    await this.#client?.close();
  }
}
