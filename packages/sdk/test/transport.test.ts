// Transport tests: one shared HTTP/2 session, lazy reconnect, HTTP/1.1 fallback, TLS ALPN,
// and an idle client that does not keep the process alive.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConnectionError, FastVM } from '../src/index.js';
import { MockServer, wireVm } from './helpers/mock-server.js';

function listen(
  server: http.Server | http2.Http2Server | https.Server | http2.Http2SecureServer,
): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );
}

function jsonHandler(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
): void {
  res.setHeader('content-type', 'application/json');
  res.end(
    JSON.stringify(
      req.url === '/healthz' ? { status: 'ok' } : wireVm({ name: `http-${req.httpVersion}` }),
    ),
  );
}

describe('HTTP/2 session sharing', () => {
  it('runs every call of one client over a single session, concurrent calls included', async () => {
    const server = await new MockServer().start();
    server.handler = (req) => ({ body: req.path === '/healthz' ? { status: 'ok' } : wireVm() });
    const client = new FastVM({ apiKey: 'k', baseUrl: server.url });
    expect(client.stats).toMatchObject({ protocol: null, sessionsOpened: 0 });
    await client.warmup();
    expect(client.stats).toMatchObject({ protocol: 'h2c', sessionsOpened: 1, openSessions: 1 });
    await Promise.all(Array.from({ length: 50 }, () => client.get('vm-1')));
    for (let i = 0; i < 20; i++) await client.list();
    expect(server.sessions).toBe(1);
    expect(client.stats).toMatchObject({ sessionsOpened: 1, requests: 71, inFlight: 0 });
    await client.close();
    await server.stop();
  });

  it('opens the session lazily on the first call when warmup is skipped, once for concurrent callers', async () => {
    const server = await new MockServer().start();
    server.handler = () => ({ body: wireVm() });
    const client = new FastVM({ apiKey: 'k', baseUrl: server.url });
    await Promise.all(Array.from({ length: 10 }, () => client.get('vm-1')));
    expect(server.sessions).toBe(1);
    await client.close();
    await server.stop();
  });

  it('reconnects lazily after the server sends GOAWAY', async () => {
    const server = await new MockServer().start();
    server.handler = () => ({ body: wireVm() });
    const client = new FastVM({ apiKey: 'k', baseUrl: server.url });
    await client.get('vm-1');
    server.goawayAll();
    await new Promise((r) => setTimeout(r, 50));
    await client.get('vm-1');
    expect(server.sessions).toBe(2);
    expect(client.stats.sessionsOpened).toBe(2);
    await client.close();
    await server.stop();
  });

  it('supports await using, and a closed client refuses further calls', async () => {
    const server = await new MockServer().start();
    server.handler = () => ({ body: wireVm() });
    let outer: FastVM | undefined;
    {
      await using client = new FastVM({ apiKey: 'k', baseUrl: server.url });
      outer = client;
      await client.get('vm-1');
      expect(server.liveSessions).toBe(1);
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(server.liveSessions).toBe(0);
    await expect(outer.get('vm-1')).rejects.toThrow(/closed/);
    await server.stop();
  });

  it('reports a refused connection as ConnectionError with requestSent=false', async () => {
    const server = await new MockServer().start();
    const url = server.url;
    await server.stop();
    const client = new FastVM({ apiKey: 'k', baseUrl: url, maxRetries: 1 });
    const err = await client.run('vm-1', 'true').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as ConnectionError).requestSent).toBe(false);
    await client.close();
  });
});

describe('HTTP/1.1 fallback', () => {
  it('falls back when a cleartext server rejects the h2c preface', async () => {
    const server = http.createServer(jsonHandler);
    const port = await listen(server);
    const client = new FastVM({ apiKey: 'k', baseUrl: `http://127.0.0.1:${port}` });
    await client.warmup();
    const vms = await Promise.all(Array.from({ length: 5 }, () => client.get('vm-1')));
    expect(vms[0]!.name).toBe('http-1.1');
    expect(client.stats.protocol).toBe('http/1.1');
    await client.close();
    server.close();
  });

  describe('over TLS', () => {
    let dir: string;
    let key: Buffer;
    let cert: Buffer;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'fastvm-sdk-tls-'));
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=IP:127.0.0.1,DNS:localhost',
          '-keyout',
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
        ],
        { stdio: 'ignore' },
      );
      key = readFileSync(join(dir, 'key.pem'));
      cert = readFileSync(join(dir, 'cert.pem'));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('negotiates h2 through ALPN and shares one session', async () => {
      const server = http2.createSecureServer({ key, cert, allowHTTP1: true }, jsonHandler);
      let sessions = 0;
      server.on('session', () => sessions++);
      const port = await listen(server);
      const client = new FastVM({
        apiKey: 'k',
        baseUrl: `https://localhost:${port}`,
        tls: { ca: cert },
      });
      await client.warmup();
      const vms = await Promise.all(Array.from({ length: 5 }, () => client.get('vm-1')));
      expect(vms[0]!.name).toBe('http-2.0');
      expect(client.stats).toMatchObject({ protocol: 'h2', sessionsOpened: 1 });
      expect(sessions).toBe(1);
      await client.close();
      server.close();
    });

    it('falls back to HTTP/1.1 when ALPN picks http/1.1', async () => {
      const server = https.createServer({ key, cert }, jsonHandler);
      const port = await listen(server);
      const client = new FastVM({
        apiKey: 'k',
        baseUrl: `https://127.0.0.1:${port}`,
        tls: { ca: cert },
      });
      const vm = await client.get('vm-1');
      expect(vm.name).toBe('http-1.1');
      expect(client.stats.protocol).toBe('http/1.1');
      await client.close();
      server.close();
    });

    it('rejects an untrusted certificate with ConnectionError', async () => {
      const server = http2.createSecureServer({ key, cert }, jsonHandler);
      const port = await listen(server);
      const client = new FastVM({
        apiKey: 'k',
        baseUrl: `https://127.0.0.1:${port}`,
        maxRetries: 0,
      });
      await expect(client.get('vm-1')).rejects.toBeInstanceOf(ConnectionError);
      await client.close();
      server.close();
    });
  });
});

describe('process lifetime', () => {
  it.each([
    ['an idle client that was never closed does not keep the process alive', ''],
    ["close() settles even though the idle session is unref'd", 'await c.close();'],
  ])('%s', async (_title, extra) => {
    const server = await new MockServer().start();
    server.handler = () => ({ body: wireVm() });
    const script = [
      "import { FastVM } from './packages/sdk/src/index.ts';",
      `const c = new FastVM({ apiKey: 'k', baseUrl: '${server.url}' });`,
      "await c.get('vm-1');",
      extra,
      "console.log('done');",
    ].join('\n');
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        cwd: join(import.meta.dirname, '../../..'),
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill();
        resolve(null);
      }, 15_000);
      child.on('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    expect(out.trim()).toBe('done');
    expect(code).toBe(0);
    await server.stop();
  });
});
