// Round-trip times of client.run(vm, "true") and client.get(vm) against the real server with the
// FakeRuntime, over h2c on loopback: p50 of 200 after warmup. Printed for the record; the bound
// asserted is loose, since CI machines vary.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FastVM, type VM } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;
let vm: VM;

beforeAll(async () => {
  server = await startTestServer();
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
  await client.warmup();
  vm = await client.launch();
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

async function measure(
  fn: () => Promise<unknown>,
  n = 200,
): Promise<{ p50: number; p90: number; p99: number }> {
  for (let i = 0; i < 20; i++) await fn(); // warm the JIT and the server's caches
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await fn();
    t.push(performance.now() - s);
  }
  t.sort((a, b) => a - b);
  const q = (p: number): number =>
    Number(t[Math.min(t.length - 1, Math.floor(p * t.length))]!.toFixed(3));
  return { p50: q(0.5), p90: q(0.9), p99: q(0.99) };
}

it('measures run(vm, "true") and get(vm) round trips over one h2c session', async () => {
  const run = await measure(() => client.run(vm, 'true'));
  const get = await measure(() => client.get(vm));
  console.log(
    `[latency] h2c FakeRuntime, n=200 — run(vm,"true") ms ${JSON.stringify(run)}; get(vm) ms ${JSON.stringify(get)}`,
  );
  expect(client.stats.sessionsOpened).toBe(1);
  expect(run.p50).toBeLessThan(50);
  expect(get.p50).toBeLessThan(50);
});
