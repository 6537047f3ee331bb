/**
 * Child process of the proxy benchmark (`proxy.ts`): a real FastVM server (QEMU runtime, host
 * networking on a bridge and subnet of its own, service proxy on a free port) with one `c1m2` VM
 * that runs `packages/server/test/fixtures/services/fast_http.py` (asyncio, 1 KiB answers, HTTP/1.1
 * keep-alive) on port 8000, published as service `bench`. Prints
 * `{"proxyPort", "host", "address", "port"}` once it answers, and cleans up (VM, server, bridge)
 * when stdin closes or on SIGTERM.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createQemuRuntime } from '@fastvm/runtime';
import { startServer } from '@fastvm/server';
import { pino } from 'pino';
import { createNetworkManager } from '../packages/server/src/services/host-network.js';

const dataDir = process.env.FASTVM_BENCH_DIR;
if (!dataDir) throw new Error('FASTVM_BENCH_DIR is not set');
const repo = path.resolve(import.meta.dirname, '..');
const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
const tag = crypto.randomBytes(2).toString('hex');

const runtime = await createQemuRuntime({ dataDir: path.join(dataDir, 'rt') });
const { network } = await createNetworkManager({
  dataDir,
  logger: pino({ level: 'silent' }),
  settings: {
    enabled: true,
    bridge: process.env.FASTVM_BENCH_PROXY_BRIDGE ?? `fvbx${tag}`,
    ipv4Subnet: process.env.FASTVM_BENCH_PROXY_IPV4_SUBNET ?? '10.227.0.0/24',
  },
});
const server = await startServer({
  dataDir,
  runtime,
  network,
  bootstrapKey: key,
  port: 0,
  logLevel: 'silent',
  shutdownGraceMs: 1000,
  launchWaitMs: 120_000,
});

async function api(method: string, p: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(server.url + p, {
    method,
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

/** The VM to delete on the way out, once there is one. */
const made: { vmId?: string } = {};
let closing = false;
const stop = (): void => {
  if (closing) return;
  closing = true;
  void (async () => {
    if (made.vmId) await api('DELETE', `/v1/vms/${made.vmId}`).catch(() => {});
    await server.close().catch(() => {});
    await runtime.destroyAll().catch(() => {});
  })().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 15_000).unref();
};
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

const vm = await api('POST', '/v1/vms', { machineType: 'c1m2', name: 'proxy-bench' });
const vmId = String(vm.id);
made.vmId = vmId;
const script = fs.readFileSync(
  path.join(repo, 'packages/server/test/fixtures/services/fast_http.py'),
);
await api('POST', `/v1/vms/${vmId}/exec`, {
  command: ['sh', '-c', 'cat > /tmp/fast_http.py'],
  stdin: script.toString('base64'),
});
const up = await api('POST', `/v1/vms/${vmId}/exec`, {
  command:
    '(nohup python3 /tmp/fast_http.py 8000 1024 >/dev/null 2>&1 &) && ' +
    'for i in $(seq 300); do curl -s -o /dev/null localhost:8000/ && exit 0; sleep 0.1; done; exit 1',
  timeoutSec: 60,
});
if (up.exitCode !== 0) throw new Error(`fast_http.py did not start: ${JSON.stringify(up)}`);
await api('POST', `/v1/vms/${vmId}/services`, { name: 'bench', port: 8000 });
process.stdout.write(
  JSON.stringify({
    proxyPort: server.proxy.port,
    host: `bench--${vmId.replace(/-/g, '')}.proxy.${server.proxy.domain}:${server.proxy.port}`,
    address: vm.publicIpv6,
    port: 8000,
  }) + '\n',
);
