/**
 * Child process of the API throughput benchmark: a real FastVM API server (HTTP/1.1 + h2c on one
 * port) backed by the FakeRuntime, so that the load generator and the server each have a core
 * and the figure is the HTTP stack's, not QEMU's. Prints `{"url", "key"}` on stdout when
 * listening, and exits when stdin closes (the parent went away) or on SIGTERM.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';

const key = process.env.FASTVM_BENCH_KEY;
const dataDir = process.env.FASTVM_BENCH_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'fvb-'));
if (!key) throw new Error('FASTVM_BENCH_KEY is not set');

const server = await startServer({
  dataDir,
  runtime: new FakeRuntime(),
  bootstrapKey: key,
  port: 0,
  logLevel: 'silent',
  shutdownGraceMs: 1000,
});
process.stdout.write(JSON.stringify({ url: server.url, key: server.bootstrapKey }) + '\n');

let closing = false;
const stop = () => {
  if (closing) return;
  closing = true;
  void server.close().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
};
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
