/**
 * The service proxy's mechanics with the FakeRuntime: the network manager gives every VM the
 * address `::1`, so backends are servers of this test on the host's loopback standing in for
 * a VM (no VM serves anything here; `services-vm.test.ts` does that with real VMs). Routing by
 * Host, error pages, streaming both ways, SSE, WebSocket upgrades, h2c backends with trailers,
 * HTTP/2 clients, credentials and their removal, and what a Host header cannot reach.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FirewallPolicy } from '../src/domain/index.js';
import type { NetworkManager, VmNetworkAttachment } from '../src/services/network.js';
import { TestClient, createOrgWithKey, startTestServer, type TestServer } from './helpers.js';
import { h2Request, viaProxy } from './proxy-helpers.js';

class LoopbackNetwork implements NetworkManager {
  async attach(_vmId: string, _policy: FirewallPolicy): Promise<VmNetworkAttachment> {
    return { publicIpv6: '::1' };
  }
  async onFirewallChange(): Promise<void> {}
  async release(): Promise<void> {}
  async reconcile(): Promise<void> {}
  async close(): Promise<void> {}
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, '::1', () => resolve((server.address() as AddressInfo).port)),
  );
}

describe('service proxy (FakeRuntime, loopback backends)', { timeout: 30_000 }, () => {
  let t: TestServer;
  let api: TestClient;
  let proxyPort: number;
  let vmId: string;
  let hex: string;
  const host = (name: string, id = hex) => `${name}--${id}.proxy.localhost:${proxyPort}`;
  let backend: http.Server;
  let backendPort: number;
  let h2Backend: http2.Http2Server;
  let h2Port: number;
  let lastHeaders: http.IncomingHttpHeaders = {};
  let sseNext: (() => void) | undefined;

  beforeAll(async () => {
    backend = http.createServer((req, res) => {
      lastHeaders = req.headers;
      if (req.url === '/echo') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        req.pipe(res);
      } else if (req.url === '/sse') {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.write('data: one\n\n');
        sseNext = () => {
          res.write('data: two\n\n');
          res.end();
        };
      } else {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-backend': 'h1' });
        res.end(`hello ${req.method} ${req.url}`);
      }
    });
    // A WebSocket-style upgrade: 101, then every byte echoed back.
    backend.on('upgrade', (req, socket: net.Socket, head: Buffer) => {
      lastHeaders = req.headers;
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n',
      );
      if (head.length > 0) socket.write(head);
      socket.pipe(socket);
    });
    backendPort = await listen(backend);
    h2Backend = http2.createServer();
    h2Backend.on('stream', (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        stream.respond(
          {
            ':status': 200,
            'content-type': 'application/grpc',
            'x-path': String(headers[':path']),
          },
          { waitForTrailers: true },
        );
        stream.on('wantTrailers', () =>
          stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'ok' }),
        );
        stream.end(Buffer.concat([Buffer.from('h2:'), ...chunks]));
      });
    });
    h2Port = await listen(h2Backend);

    t = await startTestServer({ network: new LoopbackNetwork() });
    api = new TestClient(t.url, t.key);
    proxyPort = t.server.proxy.port;
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    vmId = vm.body.id;
    hex = vmId.replace(/-/g, '');
    expect(vm.body.publicIpv6).toBe('::1');
    for (const s of [
      { name: 'web', port: backendPort },
      { name: 'grpc', port: h2Port, h2c: true },
      { name: 'tok', port: backendPort, auth: 'token' },
      { name: 'keyed', port: backendPort, auth: 'api_key' },
      { name: 'nobody', port: 1 + 65534 - (backendPort % 100) }, // nothing listens there
    ]) {
      expect((await api.post(`/v1/vms/${vmId}/services`, s)).status).toBe(201);
    }
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
    backend.closeAllConnections();
    backend.close();
    h2Backend.close();
  });

  it('routes by Host to the VM address and the service port (GET, HEAD, POST)', async () => {
    const r = await viaProxy(proxyPort, host('web'), '/a/b?c=1');
    expect(r.status).toBe(200);
    expect(r.body).toBe('hello GET /a/b?c=1');
    expect(r.headers['x-backend']).toBe('h1');
    expect(lastHeaders.host).toBe(host('web'));
    expect(lastHeaders['x-forwarded-host']).toBe(host('web'));
    expect(lastHeaders['x-forwarded-proto']).toBe('http');
    expect(lastHeaders['x-forwarded-for']).toBe('127.0.0.1');
    // Case and a trailing dot do not matter.
    const upper = await viaProxy(proxyPort, `WEB--${hex.toUpperCase()}.PROXY.LOCALHOST.`);
    expect(upper.status).toBe(200);
    const head = await viaProxy(proxyPort, host('web'), '/', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    const post = await viaProxy(proxyPort, host('web'), '/echo', {
      method: 'POST',
      body: 'x'.repeat(100_000),
    });
    expect(post.body).toBe('x'.repeat(100_000));
  });

  it('answers its own errors as small pages: unknown host, VM, service; refused backend', async () => {
    const unknown = await viaProxy(proxyPort, 'example.com');
    expect(unknown.status).toBe(404);
    expect(unknown.headers['content-type']).toMatch(/^text\/plain/);
    expect(unknown.headers['x-fastvm-proxy-error']).toBe('unknown_host');
    expect(unknown.body).toMatch(/not a service hostname/);
    const html = await viaProxy(proxyPort, `localhost:${proxyPort}`, '/', {
      headers: { accept: 'text/html' },
    });
    expect(html.status).toBe(404);
    expect(html.headers['content-type']).toMatch(/^text\/html/);
    expect(html.body).toMatch(/<h1>404 Not found<\/h1>/);

    const noVm = await viaProxy(proxyPort, host('web', '0'.repeat(32)));
    expect(noVm.status).toBe(404);
    expect(noVm.headers['x-fastvm-proxy-error']).toBe('unknown_vm');
    const noService = await viaProxy(proxyPort, host('other'));
    expect(noService.status).toBe(404);
    expect(noService.headers['x-fastvm-proxy-error']).toBe('unknown_service');
    const refused = await viaProxy(proxyPort, host('nobody'));
    expect(refused.status).toBe(502);
    expect(refused.headers['x-fastvm-proxy-error']).toBe('backend_refused');
    expect(refused.body).toMatch(/refused the connection/);
  });

  it('takes origin-form targets only: an absolute URI cannot name another address', async () => {
    const sock = net.connect(proxyPort, '127.0.0.1');
    const answer = await new Promise<string>((resolve) => {
      let out = '';
      sock.on('data', (c) => (out += c.toString()));
      sock.on('close', () => resolve(out));
      sock.on('end', () => resolve(out));
      sock.write(
        `GET http://127.0.0.1:${t.server.port}/v1/vms HTTP/1.1\r\nhost: ${host('web')}\r\nconnection: close\r\n\r\n`,
      );
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400/);
    // The API's own address as the Host is not a service.
    const api404 = await viaProxy(proxyPort, `127.0.0.1:${t.server.port}`, '/v1/vms');
    expect(api404.status).toBe(404);
  });

  it('streams request and response bodies without buffering', async () => {
    const got = await new Promise<string[]>((resolve, reject) => {
      const seen: string[] = [];
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        path: '/echo',
        method: 'POST',
        headers: { host: host('web'), 'transfer-encoding': 'chunked' },
        agent: false,
      });
      req.on('response', (res) => {
        res.on('data', (c: Buffer) => {
          seen.push(c.toString());
          // The next chunk goes only after the previous one came back through the proxy.
          if (seen.length < 3) req.write(`chunk${seen.length + 1}`);
          else req.end();
        });
        res.on('end', () => resolve(seen));
      });
      req.on('error', reject);
      req.write('chunk1');
      req.flushHeaders();
    });
    expect(got).toEqual(['chunk1', 'chunk2', 'chunk3']);
  });

  it('passes SSE events through as they are written', async () => {
    const events = await new Promise<string[]>((resolve, reject) => {
      const seen: string[] = [];
      const req = http.get(
        {
          host: '127.0.0.1',
          port: proxyPort,
          path: '/sse',
          headers: { host: host('web') },
          agent: false,
        },
        (res) => {
          expect(res.headers['content-type']).toBe('text/event-stream');
          res.on('data', (c: Buffer) => {
            seen.push(c.toString());
            // The second event is written only once the first arrived here.
            if (seen.length === 1) sseNext?.();
          });
          res.on('end', () => resolve(seen));
        },
      );
      req.on('error', reject);
    });
    expect(events.join('')).toBe('data: one\n\ndata: two\n\n');
    expect(events[0]).toBe('data: one\n\n');
  });

  it('splices WebSocket upgrades through', async () => {
    const sock = net.connect(proxyPort, '127.0.0.1');
    const reply = await new Promise<string>((resolve) => {
      let out = '';
      sock.on('data', (c) => {
        out += c.toString();
        if (out.includes('\r\n\r\n') && !out.includes('ping')) sock.write('ping');
        if (out.endsWith('ping')) resolve(out);
      });
      sock.write(
        `GET /ws HTTP/1.1\r\nhost: ${host('web')}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n` +
          'sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
    });
    sock.destroy();
    expect(reply).toMatch(/^HTTP\/1\.1 101 /);
    expect(lastHeaders.upgrade).toBe('websocket');
    expect(lastHeaders.connection).toMatch(/upgrade/i);
    // Upgrades for unknown hosts get the page on the raw socket.
    const bad = net.connect(proxyPort, '127.0.0.1');
    const refused = await new Promise<string>((resolve) => {
      let out = '';
      bad.on('data', (c) => (out += c.toString()));
      bad.on('close', () => resolve(out));
      bad.write(
        'GET / HTTP/1.1\r\nhost: nope.example\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n',
      );
    });
    expect(refused).toMatch(/^HTTP\/1\.1 404 /);
  });

  it('speaks h2c to h2c backends, trailers included, from HTTP/1.1 and HTTP/2 clients', async () => {
    const viaH1 = await viaProxy(proxyPort, host('grpc'), '/pkg.Svc/Call', {
      method: 'POST',
      headers: { te: 'trailers', 'content-type': 'application/grpc' },
      body: 'payload',
    });
    expect(viaH1.status).toBe(200);
    expect(viaH1.body).toBe('h2:payload');
    expect(viaH1.headers['x-path']).toBe('/pkg.Svc/Call');

    const session = http2.connect(`http://127.0.0.1:${proxyPort}`);
    try {
      const result = await h2Request(
        session,
        {
          ':method': 'POST',
          ':path': '/pkg.Svc/Call',
          ':authority': host('grpc'),
          'content-type': 'application/grpc',
          te: 'trailers',
        },
        'grpc-body',
      );
      expect(result).toMatchObject({ status: 200, body: 'h2:grpc-body' });
      expect(result.trailers['grpc-status']).toBe('0');

      // An HTTP/2 client to an HTTP/1.1 service.
      const { status, body } = await h2Request(session, {
        ':path': '/x',
        ':authority': host('web'),
      });
      const plain = { status, body };
      expect(plain).toEqual({ status: 200, body: 'hello GET /x' });
    } finally {
      session.close();
    }
  });

  it('token services: 401 with an explanation, 200 with the token, which the VM never sees', async () => {
    const token = (await api.get(`/v1/vms/${vmId}/services`)).body.find(
      (s: { name: string }) => s.name === 'tok',
    ).token as string;
    const none = await viaProxy(proxyPort, host('tok'));
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(none.body).toMatch(/requires its bearer token/);
    const wrong = await viaProxy(proxyPort, host('tok'), '/', {
      headers: { authorization: 'Bearer fvs_wrong' },
    });
    expect(wrong.status).toBe(401);
    const ok = await viaProxy(proxyPort, host('tok'), '/', {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(ok.status).toBe(200);
    expect(lastHeaders.authorization).toBeUndefined();
    // Public services pass Authorization on untouched (it is the app's own).
    await viaProxy(proxyPort, host('web'), '/', { headers: { authorization: 'Bearer app-token' } });
    expect(lastHeaders.authorization).toBe('Bearer app-token');
  });

  it("api_key services take the org's keys only, and never forward them", async () => {
    expect((await viaProxy(proxyPort, host('keyed'))).status).toBe(401);
    const ok = await viaProxy(proxyPort, host('keyed'), '/', { headers: { 'x-api-key': t.key } });
    expect(ok.status).toBe(200);
    expect(lastHeaders['x-api-key']).toBeUndefined();
    const bearer = await viaProxy(proxyPort, host('keyed'), '/', {
      headers: { authorization: `Bearer ${t.key}` },
    });
    expect(bearer.status).toBe(200);
    const otherKey = await createOrgWithKey(t.server, 'proxy-other');
    const other = await viaProxy(proxyPort, host('keyed'), '/', {
      headers: { 'x-api-key': otherKey },
    });
    expect(other.status).toBe(401);
    expect(other.body).toMatch(/not valid for this VM's org/);
  });

  it('forgets a deleted service and a stopped VM at once; a VM without address is a 502', async () => {
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    const id = vm.body.id as string;
    const idHex = id.replace(/-/g, '');
    await api.post(`/v1/vms/${id}/services`, { name: 'web', port: backendPort });
    expect((await viaProxy(proxyPort, host('web', idHex))).status).toBe(200);
    await api.del(`/v1/vms/${id}/services/web`);
    expect((await viaProxy(proxyPort, host('web', idHex))).status).toBe(404);
    await api.post(`/v1/vms/${id}/services`, { name: 'web', port: backendPort });
    expect((await viaProxy(proxyPort, host('web', idHex))).status).toBe(200);

    t.runtime.crash(id);
    await new Promise((r) => setTimeout(r, 100));
    const stopped = await viaProxy(proxyPort, host('web', idHex));
    expect(stopped.status).toBe(502);
    expect(stopped.headers['x-fastvm-proxy-error']).toBe('vm_not_running');
    expect(stopped.body).toMatch(/is stopped/);

    const bare = await api.post('/v1/vms', { machineType: 'c1m2' });
    await t.server.store.updateVm(bare.body.id, { publicIpv6: null });
    await api.post(`/v1/vms/${bare.body.id}/services`, { name: 'web', port: backendPort });
    const noAddr = await viaProxy(proxyPort, host('web', bare.body.id.replace(/-/g, '')));
    expect(noAddr.status).toBe(502);
    expect(noAddr.body).toMatch(/no network address/);
  });
});

describe('service proxy over TLS (the API certificate)', { timeout: 30_000 }, () => {
  let t: TestServer;
  let certDir: string;
  let cert: Buffer;
  let backend: http.Server;

  beforeAll(async () => {
    certDir = await fs.mkdtemp(path.join(os.tmpdir(), 'fvsvc-tls-'));
    const keyFile = path.join(certDir, 'key.pem');
    const certFile = path.join(certDir, 'cert.pem');
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'],
        ...['-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost'],
        ...['-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:*.proxy.localhost'],
      ],
      { stdio: 'ignore' },
    );
    cert = await fs.readFile(certFile);
    backend = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`tls ${req.headers['x-forwarded-proto']}`);
    });
    const port = await listen(backend);
    t = await startTestServer({
      network: new LoopbackNetwork(),
      tls: { cert, key: await fs.readFile(keyFile) },
    });
    const call = (p: string, body: unknown): Promise<{ id?: string; url?: string }> =>
      new Promise((resolve, reject) => {
        const req = https.request(
          `${t.url}${p}`,
          {
            method: 'POST',
            ca: cert,
            headers: { 'x-api-key': t.key, 'content-type': 'application/json' },
          },
          (res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => resolve(JSON.parse(text) as { id?: string; url?: string }));
          },
        );
        req.on('error', reject);
        req.end(JSON.stringify(body));
      });
    const vm = await call('/v1/vms', { machineType: 'c1m2' });
    const svc = await call(`/v1/vms/${vm.id}/services`, { name: 'web', port });
    expect(svc.url).toMatch(/^https:\/\/web--[0-9a-f]{32}\.proxy\.localhost:\d+$/);
  });
  afterAll(async () => {
    await t.cleanup();
    backend.close();
    await fs.rm(certDir, { recursive: true, force: true });
  });

  it('serves h2 (ALPN) and HTTP/1.1 over TLS', async () => {
    const id = (await t.server.store.listVms((await t.server.store.listOrgs())[0]!.id))[0]!.id;
    const host = `web--${id.replace(/-/g, '')}.proxy.localhost:${t.server.proxy.port}`;
    const session = http2.connect(`https://127.0.0.1:${t.server.proxy.port}`, { ca: cert });
    try {
      const { body } = await h2Request(session, { ':path': '/', ':authority': host });
      expect(body).toBe('tls https');
    } finally {
      session.close();
    }
    const viaH1 = await new Promise<string>((resolve, reject) => {
      https
        .get(
          {
            host: '127.0.0.1',
            port: t.server.proxy.port,
            path: '/',
            headers: { host },
            ca: cert,
            servername: 'localhost',
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve(Buffer.concat(chunks).toString()));
          },
        )
        .on('error', reject);
    });
    expect(viaH1).toBe('tls https');
  });
});

describe('service proxy timeouts', { timeout: 30_000 }, () => {
  it('answers 504 when the backend does not answer in time', async () => {
    // Accepts connections and never answers.
    const silent = net.createServer(() => {});
    const port = await listen(silent);
    const t = await startTestServer({
      network: new LoopbackNetwork(),
      proxy: { responseTimeoutMs: 500 },
    });
    try {
      const api = new TestClient(t.url, t.key);
      const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
      await api.post(`/v1/vms/${vm.body.id}/services`, { name: 'slow', port });
      const host = `slow--${vm.body.id.replace(/-/g, '')}.proxy.localhost`;
      const started = performance.now();
      const r = await viaProxy(t.server.proxy.port, host);
      expect(r.status).toBe(504);
      expect(r.headers['x-fastvm-proxy-error']).toBe('backend_timeout');
      expect(r.body).toMatch(/did not answer in time/);
      expect(performance.now() - started).toBeLessThan(5000);
      api.close();
    } finally {
      await t.cleanup();
      silent.close();
    }
  });
});

describe('service proxy port', () => {
  it('a busy port fails the start, unless it is the default of serve (then any free port)', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as AddressInfo).port;
    const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'fvproxyport-'));
    try {
      await expect(startTestServer({ dataDir, proxy: { port } })).rejects.toThrow(/EADDRINUSE/);
      const t = await startTestServer({ proxy: { port, optional: true } });
      try {
        expect(t.server.proxy.port).toBeGreaterThan(0);
        expect(t.server.proxy.port).not.toBe(port);
        // It serves: an unknown host is the proxy's 404 page.
        const res = await fetch(`http://127.0.0.1:${t.server.proxy.port}/`);
        expect(res.status).toBe(404);
      } finally {
        await t.cleanup();
      }
    } finally {
      busy.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});
