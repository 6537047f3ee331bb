/**
 * Test harness: a real server on an ephemeral port with a FakeRuntime, and a tiny client that
 * speaks HTTP/1.1 (fetch) or h2c (node:http2 with prior knowledge).
 */
import fs from 'node:fs/promises';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { startServer, type ServerHandle, type StartServerOptions } from '../src/index.js';
import { FakeRuntime } from '../src/testing/index.js';

export type Transport = 'h1' | 'h2';
export const TRANSPORTS: readonly Transport[] = ['h1', 'h2'];

export interface TestServer {
  server: ServerHandle;
  runtime: FakeRuntime;
  dataDir: string;
  key: string;
  url: string;
  /** Closes the server (gracefully) and removes the data dir. */
  cleanup(): Promise<void>;
}

export async function makeDataDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-server-test-'));
}

export async function startTestServer(
  opts: Partial<StartServerOptions> & { runtime?: FakeRuntime } = {},
): Promise<TestServer> {
  const dataDir = opts.dataDir ?? (await makeDataDir());
  const runtime = opts.runtime ?? new FakeRuntime();
  const server = await startServer({
    port: 0,
    logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
    shutdownGraceMs: 2000,
    ...opts,
    dataDir,
    runtime,
  });
  return {
    server,
    runtime,
    dataDir,
    key: server.bootstrapKey,
    url: server.url,
    async cleanup() {
      await server.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface TestResponse {
  status: number;
  headers: Record<string, string>;
  text: string;
  // Tests assert on shapes; `any` keeps them readable.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

export interface RequestOptions {
  body?: unknown;
  /** Sent verbatim (overrides `body`). */
  rawBody?: string;
  headers?: Record<string, string>;
  /** Omit the API key. */
  noAuth?: boolean;
}

/** A client bound to one server, key and transport. */
export class TestClient {
  private session: http2.ClientHttp2Session | undefined;

  constructor(
    readonly baseUrl: string,
    readonly key: string | undefined,
    readonly transport: Transport = 'h1',
  ) {}

  withKey(key: string | undefined): TestClient {
    return new TestClient(this.baseUrl, key, this.transport);
  }

  get = (p: string, o?: RequestOptions) => this.request('GET', p, o);
  post = (p: string, body?: unknown, o?: RequestOptions) => this.request('POST', p, { ...o, body });
  patch = (p: string, body?: unknown, o?: RequestOptions) =>
    this.request('PATCH', p, { ...o, body });
  put = (p: string, body?: unknown, o?: RequestOptions) => this.request('PUT', p, { ...o, body });
  del = (p: string, o?: RequestOptions) => this.request('DELETE', p, o);

  async request(method: string, p: string, o: RequestOptions = {}): Promise<TestResponse> {
    const headers: Record<string, string> = { accept: 'application/json', ...o.headers };
    if (this.key && !o.noAuth) headers['x-api-key'] = this.key;
    let payload: string | undefined = o.rawBody;
    if (payload === undefined && o.body !== undefined) payload = JSON.stringify(o.body);
    if (
      payload !== undefined &&
      !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')
    ) {
      headers['content-type'] = 'application/json';
    }
    const {
      status,
      headers: h,
      text,
    } = this.transport === 'h1'
      ? await this.viaFetch(method, p, headers, payload)
      : await this.viaHttp2(method, p, headers, payload);
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    return { status, headers: h, text, body };
  }

  private async viaFetch(
    method: string,
    p: string,
    headers: Record<string, string>,
    payload: string | undefined,
  ): Promise<{ status: number; headers: Record<string, string>; text: string }> {
    const res = await fetch(this.baseUrl + p, {
      method,
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
    });
    const out: Record<string, string> = {};
    res.headers.forEach((v, k) => (out[k] = v));
    return { status: res.status, headers: out, text: await res.text() };
  }

  private viaHttp2(
    method: string,
    p: string,
    headers: Record<string, string>,
    payload: string | undefined,
  ): Promise<{ status: number; headers: Record<string, string>; text: string }> {
    if (!this.session || this.session.closed || this.session.destroyed) {
      this.session = http2.connect(this.baseUrl);
      this.session.on('error', () => {});
    }
    const session = this.session;
    return new Promise((resolve, reject) => {
      const req = session.request({ ':method': method, ':path': p, ...headers });
      let status = 0;
      const out: Record<string, string> = {};
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        status = Number(h[':status']);
        for (const [k, v] of Object.entries(h)) if (!k.startsWith(':')) out[k] = String(v);
      });
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () =>
        resolve({ status, headers: out, text: Buffer.concat(chunks).toString('utf8') }),
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

/** Creates a second org with its own key, through the admin helpers. */
export async function createOrgWithKey(server: ServerHandle, name: string): Promise<string> {
  const { createOrg, createApiKey } = await import('../src/services/orgs.js');
  const org = await createOrg(server.store, name);
  const { key } = await createApiKey(server.store, org.id);
  return key;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A ZIP with stored (uncompressed) entries. */
export function zip(files: Record<string, string>): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, body] of Object.entries(files)) {
    const data = Buffer.from(body);
    const nameBuf = Buffer.from(name);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBuf.length, 26);
    locals.push(local, nameBuf, data);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(0x031e, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(data.length, 20);
    c.writeUInt32LE(data.length, 24);
    c.writeUInt16LE(nameBuf.length, 28);
    c.writeUInt32LE((0o100644 << 16) >>> 0, 38);
    c.writeUInt32LE(offset, 42);
    central.push(c, nameBuf);
    offset += 30 + nameBuf.length + data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(Object.keys(files).length, 8);
  end.writeUInt16LE(Object.keys(files).length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}
