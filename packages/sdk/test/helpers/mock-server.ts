// A tiny HTTP/2 (h2c) mock of the FastVM API for unit tests. Not the real server: each test scripts
// the responses it needs through `handler`.
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';

export interface MockRequest {
  method: string;
  path: string;
  headers: http2.IncomingHttpHeaders;
  body: unknown;
}

export interface MockReply {
  status?: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** Delay before answering, ms. */
  delayMs?: number;
  /** Reset the stream with this HTTP/2 error code instead of answering. */
  reset?: number;
}

export type MockHandler = (req: MockRequest, n: number) => MockReply | Promise<MockReply>;

export class MockServer {
  readonly requests: MockRequest[] = [];
  sessions = 0;
  handler: MockHandler = () => ({ status: 404, body: { error: 'not found' } });
  readonly #server: http2.Http2Server;
  readonly #live = new Set<http2.ServerHttp2Session>();
  url = '';

  constructor() {
    this.#server = http2.createServer();
    this.#server.on('session', (s) => {
      this.sessions++;
      this.#live.add(s);
      s.on('close', () => this.#live.delete(s));
    });
    this.#server.on('stream', (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on('error', () => undefined); // resets and cancellations are part of the tests
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const req: MockRequest = {
          method: String(headers[':method']),
          path: String(headers[':path']),
          headers,
          body: text === '' ? undefined : (JSON.parse(text) as unknown),
        };
        this.requests.push(req);
        void this.#answer(stream, req);
      });
    });
  }

  async #answer(stream: http2.ServerHttp2Stream, req: MockRequest): Promise<void> {
    const reply = await this.handler(req, this.requests.length);
    if (reply.delayMs) await new Promise((r) => setTimeout(r, reply.delayMs));
    if (stream.destroyed || stream.closed) return;
    if (reply.reset !== undefined) {
      stream.close(reply.reset);
      return;
    }
    const body = reply.body === undefined ? '' : JSON.stringify(reply.body);
    stream.respond({
      ':status': reply.status ?? 200,
      'content-type': 'application/json',
      ...reply.headers,
    });
    stream.end(body);
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  /** Sends GOAWAY on every live session (the server keeps listening). */
  goawayAll(): void {
    for (const s of this.#live) s.close();
  }

  get liveSessions(): number {
    return this.#live.size;
  }

  async stop(): Promise<void> {
    for (const s of this.#live) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** A wire VM body with the given overrides. */
export function wireVm(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'vm-1',
    name: 'one',
    orgId: 'org-1',
    status: 'running',
    cpu: 1,
    memoryMiB: 2048,
    diskGiB: 10,
    createdAt: '2026-01-01T00:00:00.000Z',
    machineName: 'c1m2',
    sourceName: '',
    ...over,
  };
}

/** A wire snapshot body with the given overrides. */
export function wireSnapshot(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'snap-1',
    name: 'snap',
    orgId: 'org-1',
    vmId: 'vm-1',
    status: 'ready',
    createdAt: '2026-01-01T00:00:00.000Z',
    ...over,
  };
}

export const EXEC_OK = {
  exitCode: 0,
  stdout: 'hello\n',
  stderr: '',
  timedOut: false,
  stdoutTruncated: false,
  stderrTruncated: false,
  durationMs: 3,
};
