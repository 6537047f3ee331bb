import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createProtocolServers } from '../src/http/listener.js';
import { makeDataDir, startTestServer, type TestServer } from './helpers.js';

/** POSTs over HTTP/1.1 (https with `ca`) and resolves with the JSON reply. */
function post(url: string, key: string, ca?: Buffer): Promise<Record<string, string>> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ machineType: 'c1m2' });
    const req = (url.startsWith('https:') ? https : http).request(
      url,
      {
        method: 'POST',
        headers: { 'x-api-key': key, 'content-type': 'application/json' },
        ...(ca ? { ca } : {}),
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve(JSON.parse(text) as Record<string, string>));
      },
    );
    req.on('error', reject);
    req.end(url.endsWith('/v1/vms') ? body : undefined);
  });
}

/**
 * A console session through the listener: launch a (fake) VM, get a token, upgrade to a
 * WebSocket, wait for the prompt, `exit 7`; resolves with the close code and reason.
 */
async function consoleSession(
  t: TestServer,
  opts: WebSocket.ClientOptions = {},
): Promise<{ code: number; reason: string }> {
  const ca = opts.ca as Buffer | undefined;
  const vm = await post(`${t.url}/v1/vms`, t.key, ca);
  const tok = await post(`${t.url}/v1/vms/${vm.id}/console-token`, t.key, ca);
  const url = `${t.url.replace(/^http/, 'ws')}${tok.websocketPath}?session=${tok.token}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    let out = '';
    ws.on('message', (data: Buffer) => {
      out += data.toString();
      if (out.endsWith('$ ')) ws.send('exit 7\r');
    });
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    ws.on('error', reject);
  });
}

describe('cleartext listener: HTTP/1.1, h2c and WebSocket on one port', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('speaks HTTP/1.1 and h2c prior knowledge on the same port', async () => {
    const h1 = await new Promise<string>((resolve, reject) => {
      http
        .get(`${t.url}/healthz`, (res) => resolve(`${res.httpVersion} ${res.statusCode}`))
        .on('error', reject);
    });
    expect(h1).toBe('1.1 200');

    const session = http2.connect(t.url);
    const status = await new Promise<number>((resolve, reject) => {
      const req = session.request({ ':path': '/healthz' });
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', reject);
      req.resume();
    });
    session.close();
    expect(status).toBe(200);
  });

  it('handles a client that sends the HTTP/2 preface one byte at a time', async () => {
    const port = new URL(t.url).port;
    const sock = net.connect(Number(port), '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    for (const byte of preface) {
      sock.write(Buffer.from([byte]));
      await new Promise((r) => setTimeout(r, 1));
    }
    // An empty SETTINGS frame; the server answers with its own SETTINGS frame (type 0x4).
    sock.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
    const reply = await new Promise<Buffer>((resolve) => sock.once('data', resolve));
    expect(reply[3]).toBe(4);
    sock.destroy();
  });

  it('routes WebSocket upgrades over HTTP/1.1 to the app', async () => {
    const closed = await consoleSession(t);
    expect(closed).toEqual({ code: 1000, reason: '{"type":"exit","exitCode":7}' });
  });

  it('answers a WebSocket upgrade on an ordinary route as the route would, then closes', async () => {
    const vm = await post(`${t.url}/v1/vms`, t.key);
    const cases: Array<[string, Record<string, string>, number, Record<string, unknown>]> = [
      ['/healthz', {}, 200, { status: 'ok' }],
      ['/v1/vms', {}, 401, { code: 'unauthorized' }],
      ['/v1/vms/no-such-vm', { 'x-api-key': t.key }, 404, { code: 'not_found' }],
      [`/v1/vms/${vm.id}`, { 'x-api-key': t.key }, 200, { id: vm.id }],
      ['/nope', {}, 404, { code: 'not_found' }],
    ];
    for (const [path, headers, status, body] of cases) {
      const answer = await new Promise<{ status: number; body: unknown; closed: boolean }>(
        (resolve, reject) => {
          const ws = new WebSocket(`${t.url.replace(/^http/, 'ws')}${path}`, { headers });
          ws.once('open', () => reject(new Error(`${path}: upgraded`)));
          ws.once('unexpected-response', (_req, res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => {
              // The server closes the connection: nothing would read a next request on it.
              res.socket.once('close', () =>
                resolve({ status: res.statusCode ?? 0, body: JSON.parse(text), closed: true }),
              );
            });
          });
          ws.once('error', () => {});
        },
      );
      expect(answer, path).toMatchObject({ status, body, closed: true });
    }
  });

  it('answers `Upgrade: h2c` (curl --http2) over HTTP/1.1 instead of refusing it', async () => {
    const res = await new Promise<{ status: number; type: string; text: string }>((resolve) => {
      const req = http.get(`${t.url}/healthz`, {
        headers: { connection: 'Upgrade, HTTP2-Settings', upgrade: 'h2c', 'http2-settings': '' },
      });
      req.on('response', (r) => {
        let text = '';
        r.on('data', (c: Buffer) => (text += c.toString()));
        r.on('end', () =>
          resolve({ status: r.statusCode ?? 0, type: String(r.headers['content-type']), text }),
        );
      });
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ status: 'ok' });
  });

  it('h2c: an exec body at the limit arrives promptly on a slow link while other streams run', async () => {
    // 20 ms each way between client and server.
    const port = Number(new URL(t.url).port);
    const proxy = net.createServer((client) => {
      const server = net.connect(port, '127.0.0.1');
      const delayed = (to: net.Socket) => (chunk: Buffer) => {
        setTimeout(() => to.write(chunk), 20);
      };
      client.on('data', delayed(server));
      server.on('data', delayed(client));
      client.on('close', () => server.destroy());
      server.on('close', () => client.destroy());
      client.on('error', () => server.destroy());
      server.on('error', () => client.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const vm = await post(`${t.url}/v1/vms`, t.key);
    // A client as the SDK makes it (16 MiB receive windows). Node's client counts the body it
    // has queued against its own session memory, so that limit is raised too: with the default
    // (10 MB) this client, not the server, would reset its other streams.
    const session = http2.connect(`http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, {
      maxSessionMemory: 64,
      settings: { initialWindowSize: 16 * 1024 * 1024 },
    });
    session.on('error', () => {});
    const request = (
      method: string,
      path: string,
      body?: Buffer,
    ): Promise<{ status: number; ms: number; text: string }> => {
      const started = Date.now();
      return new Promise((resolve, reject) => {
        const req = session.request(
          {
            ':method': method,
            ':path': path,
            'x-api-key': t.key,
            'content-type': 'application/json',
          },
          { endStream: body === undefined },
        );
        let status = 0;
        let text = '';
        req.on('response', (h) => (status = Number(h[':status'])));
        req.on('data', (c: Buffer) => (text += c.toString()));
        req.on('end', () => resolve({ status, ms: Date.now() - started, text }));
        req.on('error', reject);
        if (body) req.end(body);
      });
    };
    try {
      await request('GET', '/healthz');
      // 11 MiB of stdin: 14.7 MiB of JSON, under the exec limit (16 MiB).
      const stdin = Buffer.alloc(11 * 1024 * 1024, 7).toString('base64');
      const big = request(
        'POST',
        `/v1/vms/${vm.id}/exec`,
        Buffer.from(JSON.stringify({ command: ['true'], stdin })),
      );
      const small: Array<Promise<{ status: number; ms: number; text: string }>> = [];
      for (let i = 0; i < 8; i++) {
        small.push(request('GET', i % 2 ? '/v1/vms' : '/healthz'));
        small.push(request('POST', '/v1/vms', Buffer.from('{"machineType":"c1m2"}')));
        await new Promise((r) => setTimeout(r, 50));
      }
      const answers = await Promise.all(small);
      expect(answers.map((a) => a.status)).toEqual(Array(8).fill([200, 201]).flat());
      const exec = await big;
      expect(exec.status, exec.text).toBe(200);
      // At 64 KiB per round trip (the HTTP/2 default window) this body took ~10 s here.
      expect(exec.ms).toBeLessThan(5000);
    } finally {
      session.close();
      proxy.close();
    }
  });

  it('closes promptly with idle HTTP/1.1 keep-alive and HTTP/2 sessions open', async () => {
    const own = await startTestServer();
    const agent = new http.Agent({ keepAlive: true });
    await new Promise<void>((resolve, reject) => {
      http
        .get(`${own.url}/healthz`, { agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        })
        .on('error', reject);
    });
    const session = http2.connect(own.url);
    session.on('error', () => {});
    await new Promise<void>((resolve) => {
      const req = session.request({ ':path': '/healthz' });
      req.resume();
      req.on('end', resolve);
    });
    const started = Date.now();
    await own.cleanup();
    expect(Date.now() - started).toBeLessThan(1500);
    agent.destroy();
  });
});

describe('TLS listener: HTTP/2 and HTTP/1.1 by ALPN', () => {
  let t: TestServer;
  let certDir: string;
  let cert: Buffer;

  beforeAll(async () => {
    certDir = await makeDataDir();
    const keyFile = path.join(certDir, 'key.pem');
    const certFile = path.join(certDir, 'cert.pem');
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
        '-keyout',
        keyFile,
        '-out',
        certFile,
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
      ],
      { stdio: 'ignore' },
    );
    cert = await fs.readFile(certFile);
    t = await startTestServer({ tls: { cert, key: await fs.readFile(keyFile) } });
  });
  afterAll(async () => {
    await t.cleanup();
    await fs.rm(certDir, { recursive: true, force: true });
  });

  it('serves https:// URLs', () => {
    expect(t.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it('negotiates h2 via ALPN', async () => {
    const session = http2.connect(t.url, { ca: cert });
    const { status, alpn } = await new Promise<{ status: number; alpn: string | undefined }>(
      (resolve, reject) => {
        const req = session.request({ ':path': '/v1/vms', 'x-api-key': t.key });
        req.on('response', (h) =>
          resolve({ status: Number(h[':status']), alpn: session.alpnProtocol }),
        );
        req.on('error', reject);
        req.resume();
      },
    );
    session.close();
    expect(status).toBe(200);
    expect(alpn).toBe('h2');
  });

  it('falls back to HTTP/1.1 for clients without h2', async () => {
    const version = await new Promise<string>((resolve, reject) => {
      https
        .get(`${t.url}/healthz`, { ca: cert }, (res) => {
          res.resume();
          resolve(res.httpVersion);
        })
        .on('error', reject);
    });
    expect(version).toBe('1.1');
  });

  it('upgrades WebSockets over TLS', async () => {
    const closed = await consoleSession(t, { ca: cert });
    expect(closed).toEqual({ code: 1000, reason: '{"type":"exit","exitCode":7}' });
  });
});

describe('HTTP/2 stream filter (createProtocolServers)', () => {
  it('sees every stream before the compatibility layer, which gets only what it passes on', async () => {
    const seen: string[] = [];
    const handled: string[] = [];
    const { h2 } = createProtocolServers(
      (req, res) => {
        handled.push(req.url!);
        res.end('compat');
      },
      (stream, headers, next) => {
        seen.push(headers[':path']!);
        if (headers[':path'] !== '/fast') return next();
        stream.respond({ ':status': 200 });
        stream.end('filter');
      },
    );
    await new Promise<void>((r) => h2.listen(0, '127.0.0.1', r));
    const { port } = h2.address() as net.AddressInfo;
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const get = (p: string) =>
      new Promise<string>((resolve, reject) => {
        const req = session.request({ ':path': p });
        let text = '';
        req.on('data', (c: Buffer) => (text += c.toString()));
        req.on('end', () => resolve(text));
        req.on('error', reject);
      });
    try {
      expect(await Promise.all([get('/fast'), get('/slow'), get('/fast')])).toEqual([
        'filter',
        'compat',
        'filter',
      ]);
      expect(seen.sort()).toEqual(['/fast', '/fast', '/slow']);
      expect(handled).toEqual(['/slow']);
    } finally {
      session.close();
      await new Promise((r) => h2.close(r));
    }
  });
});
