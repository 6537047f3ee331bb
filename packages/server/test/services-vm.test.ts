/**
 * Published services with real QEMU VMs and host networking: servers in the guest (Python's
 * `http.server`, and the standard-library WebSocket echo, SSE and h2c servers of
 * `fixtures/services/`) reached through the proxy under their service hostnames; the firewall
 * auto-rule is what lets the proxy in (the VM's user policy stays `restricted` with no rules);
 * a restored fork serves under its own hostnames; a paused VM, unknown hosts and missing tokens
 * get the proxy's pages. Two VMs in all (the original and one fork).
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  createQemuRuntime,
  defaultCacheDir,
  tapPrefixFor,
  type QemuRuntime,
} from '@fastvm/runtime';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '../src/index.js';
import { createNetworkManager, type NetworkSettings } from '../src/services/host-network.js';
import { TestClient } from './helpers.js';
import { h2Request, viaProxy } from './proxy-helpers.js';
import { networkSkipReason } from '../../runtime/test/netns.js';

const SKIP = networkSkipReason();
const TAG = crypto.randomBytes(2).toString('hex');
// Its own runtime data dir: the server's recovery stops every VM in it that it does not own.
const RUNTIME_DIR = path.join(defaultCacheDir(), 'test-server-services');
const FIXTURES = path.join(import.meta.dirname, 'fixtures', 'services');

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout) => {
      resolve({ code: err ? 1 : 0, out: stdout });
    });
  });
}

/** A masked client frame (RFC 6455 §5.2). */
function wsFrame(opcode: number, data: Buffer): Buffer {
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(data.map((b, i) => b ^ mask[i % 4]!));
  const len =
    data.length < 126
      ? Buffer.from([data.length | 0x80])
      : Buffer.from([126 | 0x80, data.length >> 8, data.length & 0xff]);
  return Buffer.concat([Buffer.from([0x80 | opcode]), len, mask, masked]);
}

describe.skipIf(SKIP)(
  `published services (real QEMU VMs)${SKIP ? ` — skipped: ${SKIP}` : ''}`,
  () => {
    let dataDir: string;
    let runtime: QemuRuntime;
    let server: ServerHandle | undefined;
    let api: TestClient;
    let proxyPort: number;
    const settings: NetworkSettings = {
      enabled: true,
      bridge: `fvbp${TAG}`,
      ipv4Subnet: `10.216.${crypto.randomBytes(1)[0]!}.0/24`,
    };
    let vmId: string;
    const host = (name: string, id: string) =>
      `${name}--${id.replace(/-/g, '')}.proxy.localhost:${proxyPort}`;

    const exec = async (vm: string, command: string | string[], stdin?: Buffer) => {
      const r = await api.post(`/v1/vms/${vm}/exec`, {
        command,
        timeoutSec: 60,
        ...(stdin ? { stdin: stdin.toString('base64') } : {}),
      });
      expect(r.status).toBe(200);
      return r.body as { exitCode: number; stdout: string; stderr: string };
    };

    beforeAll(async () => {
      dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvsvc-'));
      // Build (or load) the golden snapshot before any test's clock starts.
      runtime = await createQemuRuntime({ dataDir: RUNTIME_DIR });
      await runtime.launch({ id: `warm-${TAG}`, machine: 'c1m2' });
      await runtime.destroy(`warm-${TAG}`);
      const { network } = await createNetworkManager({
        dataDir,
        logger: pino({ level: 'silent' }),
        settings,
      });
      server = await startServer({
        port: 0,
        dataDir,
        runtime,
        network,
        logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
        shutdownGraceMs: 2000,
        launchWaitMs: 120_000,
      });
      api = new TestClient(server.url, server.bootstrapKey);
      proxyPort = server.proxy.port;
    }, 600_000);

    afterAll(async () => {
      if (server) {
        for (const vm of (await api.get('/v1/vms')).body ?? []) {
          await api.del(`/v1/vms/${(vm as { id: string }).id}`).catch(() => {});
        }
        api.close();
        await server.close().catch(() => {});
      }
      await runtime?.destroyAll().catch(() => {});
      const links = await run('ip', ['-j', 'link', 'show']);
      for (const l of JSON.parse(links.out || '[]') as Array<{ ifname: string }>) {
        if (l.ifname.startsWith(tapPrefixFor(settings.bridge!))) {
          await run('ip', ['link', 'del', l.ifname]);
        }
      }
      const tables = await run('nft', ['-j', 'list', 'tables']);
      for (const t of (
        JSON.parse(tables.out || '{"nftables":[]}') as {
          nftables: Array<{ table?: { family: string; name: string } }>;
        }
      ).nftables) {
        if (t.table?.name.startsWith(`fastvm_${settings.bridge}`)) {
          await run('nft', ['delete', 'table', t.table.family, t.table.name]);
        }
      }
      await run('ip', ['link', 'del', settings.bridge!]);
      if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    }, 120_000);

    it(
      'serves http.server, WebSocket, SSE and h2c from the guest through the proxy',
      { timeout: 300_000 },
      async () => {
        const launched = await api.post('/v1/vms', { machineType: 'c1m2', name: `svc-${TAG}` });
        expect(launched.status).toBe(201);
        vmId = launched.body.id;
        expect(launched.body.publicIpv6).toMatch(/:/);
        expect(launched.body.firewall).toEqual({ mode: 'restricted', ingress: [] });

        for (const f of ['ws_echo.py', 'sse.py', 'h2c_echo.py']) {
          const put = await exec(
            vmId,
            ['sh', '-c', `cat > /tmp/${f}`],
            fs.readFileSync(path.join(FIXTURES, f)),
          );
          expect(put.exitCode).toBe(0);
        }
        const up = await exec(
          vmId,
          'mkdir -p /tmp/www && echo original > /tmp/www/who.txt && cd /tmp/www && ' +
            '(nohup python3 -m http.server --bind :: 8000 >/dev/null 2>&1 &) && ' +
            '(nohup python3 /tmp/ws_echo.py 8001 >/dev/null 2>&1 &) && ' +
            '(nohup python3 /tmp/sse.py 8002 3 0.5 >/dev/null 2>&1 &) && ' +
            '(nohup python3 /tmp/h2c_echo.py 8003 >/dev/null 2>&1 &) && ' +
            'for i in $(seq 300); do curl -s -o /dev/null localhost:8000/ && exit 0; sleep 0.1; done; exit 1',
        );
        expect(up.exitCode).toBe(0);

        for (const s of [
          { name: 'web', port: 8000 },
          { name: 'ws', port: 8001 },
          { name: 'sse', port: 8002 },
          { name: 'grpc', port: 8003, h2c: true },
          { name: 'secret', port: 8000, auth: 'token' },
        ]) {
          expect((await api.post(`/v1/vms/${vmId}/services`, s)).status).toBe(201);
        }
        const vm = (await api.get(`/v1/vms/${vmId}`)).body;
        expect(vm.firewall).toEqual({ mode: 'restricted', ingress: [] });
        expect(vm.effectiveFirewall.ingress).toContainEqual({
          protocol: 'tcp',
          portStart: 8003,
          sourceCidrs: ['::/0'],
          description: 'auto: proxy service grpc',
        });
        expect(vm.effectiveFirewall.ingress).toHaveLength(5);

        // Python's http.server in the guest, through the proxy (the auto-rule lets it in).
        const page = await viaProxy(proxyPort, host('web', vmId), '/who.txt');
        expect(page.status).toBe(200);
        expect(page.body).toBe('original\n');
        expect(page.headers.server).toMatch(/SimpleHTTP/);
        const listing = await viaProxy(proxyPort, host('web', vmId), '/');
        expect(listing.body).toContain('who.txt');

        // WebSocket echo: handshake, a masked text frame and a ping come back.
        const sock = net.connect(proxyPort, '127.0.0.1');
        const key = crypto.randomBytes(16).toString('base64');
        const ws = await new Promise<{ head: string; frames: Buffer }>((resolve, reject) => {
          let buf = Buffer.alloc(0);
          let head = '';
          sock.on('data', (c: Buffer) => {
            buf = Buffer.concat([buf, c]);
            if (!head) {
              const end = buf.indexOf('\r\n\r\n');
              if (end === -1) return;
              head = buf.subarray(0, end).toString();
              buf = buf.subarray(end + 4);
              sock.write(wsFrame(1, Buffer.from('hello from the test')));
              sock.write(wsFrame(9, Buffer.from('p')));
            }
            // text frame (2 + 19 bytes) and pong (2 + 1 bytes)
            if (buf.length >= 24) resolve({ head, frames: buf });
          });
          sock.on('error', reject);
          sock.write(
            `GET /chat HTTP/1.1\r\nhost: ${host('ws', vmId)}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n` +
              `sec-websocket-version: 13\r\nsec-websocket-key: ${key}\r\n\r\n`,
          );
        });
        sock.destroy();
        expect(ws.head).toMatch(/^HTTP\/1\.1 101 /);
        const accept = crypto
          .createHash('sha1')
          .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
          .digest('base64');
        expect(ws.head).toContain(`Sec-WebSocket-Accept: ${accept}`);
        expect(ws.frames[0]).toBe(0x81);
        expect(ws.frames.subarray(2, 21).toString()).toBe('hello from the test');
        expect(ws.frames[21]).toBe(0x8a); // pong

        // SSE: three events 0.5 s apart arrive one by one, not at the end.
        const arrivals = await new Promise<Array<{ at: number; text: string }>>(
          (resolve, reject) => {
            const seen: Array<{ at: number; text: string }> = [];
            http
              .get(
                {
                  host: '127.0.0.1',
                  port: proxyPort,
                  path: '/events',
                  headers: { host: host('sse', vmId) },
                  agent: false,
                },
                (res) => {
                  expect(res.headers['content-type']).toBe('text/event-stream');
                  res.on('data', (c: Buffer) =>
                    seen.push({ at: performance.now(), text: c.toString() }),
                  );
                  res.on('end', () => resolve(seen));
                },
              )
              .on('error', reject);
          },
        );
        expect(arrivals.map((a) => a.text).join('')).toBe('data: 1\n\ndata: 2\n\ndata: 3\n\n');
        expect(arrivals.length).toBeGreaterThanOrEqual(3);
        expect(arrivals.at(-1)!.at - arrivals[0]!.at).toBeGreaterThan(700);

        // h2c backend in the guest: from an HTTP/1.1 client and an HTTP/2 (prior knowledge) one.
        const grpc = await viaProxy(proxyPort, host('grpc', vmId), '/pkg.Echo/Say', {
          method: 'POST',
          headers: { 'content-type': 'application/grpc', te: 'trailers' },
          body: 'ping',
        });
        expect(grpc.status).toBe(200);
        expect(grpc.body).toBe('h2c-echo:ping');
        expect(grpc.trailers['grpc-status']).toBe('0');
        const session = http2.connect(`http://127.0.0.1:${proxyPort}`);
        try {
          const h2 = await h2Request(
            session,
            {
              ':method': 'POST',
              ':path': '/pkg.Echo/Say',
              ':authority': host('grpc', vmId),
              'content-type': 'application/grpc',
              te: 'trailers',
            },
            'over h2',
          );
          expect(h2).toMatchObject({ status: 200, body: 'h2c-echo:over h2' });
          expect(h2.trailers['grpc-status']).toBe('0');
        } finally {
          session.close();
        }

        // A token service: 401 with an explanation without the token, the page with it.
        const token = (await api.get(`/v1/vms/${vmId}/services`)).body.find(
          (s: { name: string }) => s.name === 'secret',
        ).token as string;
        const refused = await viaProxy(proxyPort, host('secret', vmId), '/who.txt');
        expect(refused.status).toBe(401);
        expect(refused.body).toMatch(/bearer token/);
        const allowed = await viaProxy(proxyPort, host('secret', vmId), '/who.txt', {
          headers: { authorization: `Bearer ${token}` },
        });
        expect(allowed.body).toBe('original\n');

        // Unknown hosts and services.
        expect((await viaProxy(proxyPort, 'example.com')).status).toBe(404);
        expect((await viaProxy(proxyPort, host('nope', vmId))).status).toBe(404);
      },
    );

    it(
      'a restored fork serves under its own hostnames; a paused VM and a removed service do not',
      { timeout: 300_000 },
      async () => {
        const snap = await api.post('/v1/snapshots', { vmId, name: `svc-snap-${TAG}` });
        expect(snap.status).toBeLessThan(300);
        expect(snap.body.services).toContainEqual({ name: 'grpc', port: 8003, h2c: true });
        const fork = await api.post('/v1/vms', { snapshotId: snap.body.id });
        expect(fork.status).toBe(201);
        expect(fork.body.snapshotRestoreWarnings).toBeUndefined();
        const forkId = fork.body.id as string;
        expect(fork.body.publicIpv6).not.toBe((await api.get(`/v1/vms/${vmId}`)).body.publicIpv6);
        const services = (await api.get(`/v1/vms/${forkId}/services`)).body;
        expect(services.map((s: { name: string }) => s.name)).toEqual([
          'grpc',
          'secret',
          'sse',
          'web',
          'ws',
        ]);
        expect(services[0].url).toContain(forkId.replace(/-/g, ''));

        // The servers were running when the snapshot was taken, so they run in the fork too.
        expect((await exec(forkId, 'echo fork > /tmp/www/who.txt')).exitCode).toBe(0);
        const fromFork = await viaProxy(proxyPort, host('web', forkId), '/who.txt');
        expect(fromFork.status).toBe(200);
        expect(fromFork.body).toBe('fork\n');
        expect((await viaProxy(proxyPort, host('web', vmId), '/who.txt')).body).toBe('original\n');
        const grpc = await viaProxy(proxyPort, host('grpc', forkId), '/x', {
          method: 'POST',
          body: 'f',
        });
        expect(grpc.body).toBe('h2c-echo:f');

        // A paused VM: 502 saying so.
        expect((await api.post(`/v1/vms/${forkId}/pause`)).status).toBe(200);
        const paused = await viaProxy(proxyPort, host('web', forkId), '/who.txt');
        expect(paused.status).toBe(502);
        expect(paused.headers['x-fastvm-proxy-error']).toBe('vm_not_running');
        expect(paused.body).toMatch(/is paused/);
        expect((await api.del(`/v1/vms/${forkId}`)).status).toBe(200);
        expect((await viaProxy(proxyPort, host('web', forkId))).status).toBe(404);

        // Removing a service removes its hostname and its firewall rule.
        expect((await api.del(`/v1/vms/${vmId}/services/web`)).status).toBe(204);
        expect((await viaProxy(proxyPort, host('web', vmId))).status).toBe(404);
        const vm = (await api.get(`/v1/vms/${vmId}`)).body;
        expect(
          vm.effectiveFirewall.ingress.map((r: { description: string }) => r.description),
        ).not.toContain('auto: proxy service web');
      },
    );
  },
);
