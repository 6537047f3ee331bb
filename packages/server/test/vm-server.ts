/**
 * A server over a real QEMU runtime for the real-VM tests: a test runtime, a scratch data dir,
 * the server (silent unless FASTVM_TEST_LOG_LEVEL, a launch waits up to a minute) and a client
 * with the bootstrap key. `close()` undoes all of it.
 */
import fs from 'node:fs/promises';
import type { QemuRuntime } from '@fastvm/runtime';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { startServer, type ServerHandle, type StartServerOptions } from '../src/index.js';
import { TestClient, makeDataDir } from './helpers.js';

export interface VmTestServer {
  runtime: QemuRuntime;
  server: ServerHandle;
  dataDir: string;
  api: TestClient;
  close(): Promise<void>;
}

export async function startVmTestServer(
  opts: Partial<StartServerOptions> = {},
): Promise<VmTestServer> {
  const runtime = await testRuntime();
  const dataDir = await makeDataDir();
  const server = await startServer({
    port: 0,
    logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
    launchWaitMs: 60_000,
    ...opts,
    dataDir,
    runtime,
  });
  const api = new TestClient(server.url, server.bootstrapKey);
  return {
    runtime,
    server,
    dataDir,
    api,
    async close() {
      api.close();
      await server.close();
      await disposeRuntime(runtime);
      await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}
