// What every command depends on, built once per invocation: the IO streams, the SDK client (created
// lazily, so `--help` and `config` never need settings or the network) and the exit code the
// command chose. Tests build one over memory streams and, where a server is not wanted, a fake
// client.
import { FastVM } from 'fastvm';
import { readConfig, resolveSettings } from './config.js';
import { CliError } from './errors.js';
import type { Out } from './output.js';

/** Streams and environment the CLI runs with (process streams, or test doubles). */
export interface IO {
  stdout: Out;
  stderr: Out;
  stdin: { isTTY?: boolean | undefined };
  env: NodeJS.ProcessEnv;
  /** Reads one line from the terminal (confirmation prompts). */
  prompt?: (question: string) => Promise<string>;
}

/** Options accepted by every command, before or after its name. */
export interface GlobalOptions {
  json?: boolean | undefined;
  apiKey?: string | undefined;
  baseUrl?: string | undefined;
}

/** What the SDK client is built from (`baseUrl` undefined: the SDK's default). */
export interface ClientSettings {
  apiKey: string;
  baseUrl: string | undefined;
}

/** Per-invocation dependencies of the commands. */
export class Factory {
  readonly io: IO;
  /** The process exit code; set by the command that ran. */
  exitCode = 0;
  readonly #newClient: (settings: ClientSettings) => FastVM;
  #client: FastVM | undefined;

  /**
   * @param io - Streams and environment.
   * @param newClient - Builds the SDK client from the resolved settings (tests pass a fake).
   */
  constructor(
    io: IO,
    newClient: (settings: ClientSettings) => FastVM = (s) =>
      new FastVM({ apiKey: s.apiKey, baseUrl: s.baseUrl }),
  ) {
    this.io = io;
    this.#newClient = newClient;
  }

  /**
   * The SDK client, created on first use from the flags, else the environment, else the config
   * file.
   */
  client(flags: GlobalOptions): FastVM {
    if (this.#client) return this.#client;
    const settings = resolveSettings(flags, this.io.env, readConfig(this.io.env));
    if (!settings.apiKey) {
      throw new CliError(
        'no API key: pass --api-key, set FASTVM_API_KEY, or run `fastvm config set api-key <key>`',
      );
    }
    this.#client = this.#newClient({ apiKey: settings.apiKey, baseUrl: settings.baseUrl });
    return this.#client;
  }

  /** Closes the client, if one was created. */
  async close(): Promise<void> {
    await this.#client?.close();
  }
}
