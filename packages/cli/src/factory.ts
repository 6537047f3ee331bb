// What every command depends on, built once per invocation: the IO streams, the SDK client and the
// exit code the command chose. The SDK is loaded and the client created on first use, so
// `--version`, `--help` and `config` need neither settings nor the network, and start without
// loading node:http2 and TLS. Tests build one over memory streams and, where a server is not
// wanted, a fake client.
import type { FastVM } from 'fastvm';
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

/** The SDK module. */
export type Sdk = typeof import('fastvm');

/** Per-invocation dependencies of the commands. */
export class Factory {
  readonly io: IO;
  /** The process exit code; set by the command that ran. */
  exitCode = 0;
  readonly #newClient: (settings: ClientSettings) => FastVM | Promise<FastVM>;
  #sdk: Sdk | undefined;
  #client: Promise<FastVM> | undefined;
  #created: FastVM | undefined;

  /**
   * @param io - Streams and environment.
   * @param newClient - Builds the SDK client from the resolved settings (tests pass a fake).
   */
  constructor(io: IO, newClient?: (settings: ClientSettings) => FastVM | Promise<FastVM>) {
    this.io = io;
    this.#newClient =
      newClient ??
      (async (s) => new (await this.sdk()).FastVM({ apiKey: s.apiKey, baseUrl: s.baseUrl }));
  }

  /** The SDK module, loaded on first use. */
  async sdk(): Promise<Sdk> {
    this.#sdk ??= await import('fastvm');
    return this.#sdk;
  }

  /** The SDK module if it was loaded (an error can only be one of its errors then). */
  get loadedSdk(): Sdk | undefined {
    return this.#sdk;
  }

  /**
   * The SDK client, created on first use from the flags, else the environment, else the config
   * file.
   */
  client(flags: GlobalOptions): Promise<FastVM> {
    this.#client ??= (async () => {
      const settings = resolveSettings(flags, this.io.env, readConfig(this.io.env));
      if (!settings.apiKey) {
        throw new CliError(
          'no API key: pass --api-key, set FASTVM_API_KEY, or run `fastvm config set api-key <key>`',
        );
      }
      const client = await this.#newClient({ apiKey: settings.apiKey, baseUrl: settings.baseUrl });
      this.#created = client;
      return client;
    })();
    return this.#client;
  }

  /** Closes the client, if one was created. */
  async close(): Promise<void> {
    await this.#created?.close();
  }
}
