// Starts the real API server (@fastvm/server) on an ephemeral port with the in-memory FakeRuntime.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type ServerHandle, type StartServerOptions } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';

export interface TestServer {
  handle: ServerHandle;
  runtime: FakeRuntime;
  url: string;
  key: string;
  stop(): Promise<void>;
}

export const TEST_KEY = 'fastvm-sdk-test-key-0123456789';

export async function startTestServer(
  extra: Partial<StartServerOptions> = {},
): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'fastvm-sdk-server-'));
  const runtime = new FakeRuntime();
  const handle = await startServer({
    port: 0,
    dataDir,
    runtime,
    bootstrapKey: TEST_KEY,
    logLevel: 'silent',
    ...extra,
  });
  return {
    handle,
    runtime,
    url: handle.url,
    key: handle.bootstrapKey,
    async stop() {
      await handle.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
