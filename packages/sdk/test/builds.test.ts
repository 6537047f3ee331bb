// client.build / importImage / watchImport against the real API server with the FakeRuntime
// (issue 15): the context directory is zipped and uploaded, events and build output arrive,
// the snapshot comes back; failures throw BuildError.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildError, FastVM, type BuildEvent } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;
let dir: string;

beforeAll(async () => {
  server = await startTestServer();
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-sdk-build-'));
  await fs.writeFile(
    path.join(dir, 'Dockerfile'),
    'FROM fastvm/base\nENV A=1\nRUN echo from-the-build\n',
  );
  await fs.mkdir(path.join(dir, 'sub'));
  await fs.writeFile(path.join(dir, 'sub/x.txt'), 'x');
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

describe('builds', () => {
  it('build(): a directory context, events and output, the snapshot', async () => {
    const events: BuildEvent[] = [];
    let log = '';
    const snap = await client.build({
      context: dir,
      name: 'sdk-built',
      onEvent: (e) => events.push(e),
      onLog: (d) => (log += d),
      pollInterval: 50,
    });
    expect(snap).toMatchObject({ name: 'sdk-built', status: 'ready' });
    expect(events.map((e) => e.phase)).toContain('build');
    expect(events.at(-1)).toMatchObject({ phase: 'done', status: 'completed' });
    expect(log).toContain('from-the-build');

    // An inline Dockerfile over the same context; the RUN is cached now.
    const items: string[] = [];
    const started = await client.startBuild({
      context: dir,
      dockerfile: 'FROM fastvm/base\nENV A=1\nRUN echo from-the-build\n',
    });
    for await (const item of client.watchImport(started.id, { pollInterval: 50 })) {
      items.push(item.type);
      if (item.type === 'done') expect(item.import.steps).toEqual({ total: 1, cached: 1, ran: 0 });
    }
    expect(items.at(-1)).toBe('done');
    expect((await client.listImports()).map((i) => i.id)).toContain(started.id);
  });

  it('importImage(); a failed build throws BuildError with the reason', async () => {
    const snap = await client.importImage('debian:bookworm', {
      name: 'sdk-base',
      pollInterval: 50,
    });
    expect(snap.name).toBe('sdk-base');
    const err = await client
      .build({ dockerfile: 'FROM fastvm/base\nVOLUME /x\n', pollInterval: 50 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BuildError);
    expect((err as BuildError).message).toMatch(/Dockerfile line 2: VOLUME is not supported/);
  });
});
