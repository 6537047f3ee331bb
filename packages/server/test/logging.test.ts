/**
 * Logs a person can read: pretty on a TTY, JSON otherwise; request ids that appear in the
 * response header, in error bodies and in the server's log lines of that request.
 */
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, logFormat } from '../src/logging.js';
import { startTestServer, TestClient, TRANSPORTS, type TestServer } from './helpers.js';

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('log format', () => {
  it('is pretty on a TTY and JSON otherwise; FASTVM_LOG_FORMAT overrides', () => {
    expect(logFormat(true, {})).toBe('pretty');
    expect(logFormat(false, {})).toBe('json');
    expect(logFormat(true, { FASTVM_LOG_FORMAT: 'json' })).toBe('json');
    expect(logFormat(false, { FASTVM_LOG_FORMAT: 'pretty' })).toBe('pretty');
    expect(() => logFormat(false, { FASTVM_LOG_FORMAT: 'xml' })).toThrow(/pretty or json/);
  });

  it('writes one JSON object per line, or a readable line with the level and fields', () => {
    const json = capture();
    createLogger('info', 'json', json.stream).info({ vm: 'v1' }, 'launched');
    const rec = JSON.parse(json.text().trim()) as Record<string, unknown>;
    expect(rec).toMatchObject({ level: 30, msg: 'launched', vm: 'v1' });

    const pretty = capture();
    createLogger('info', 'pretty', pretty.stream).info({ vm: 'v1' }, 'launched');
    const line = pretty.text();
    expect(() => JSON.parse(line)).toThrow();
    expect(line).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: launched\n\s+vm: "v1"\n$/);
  });
});

describe('request ids', () => {
  let t: TestServer;
  const log = capture();
  beforeAll(async () => {
    t = await startTestServer({ logger: createLogger('info', 'json', log.stream) });
  });
  afterAll(async () => {
    await t.cleanup();
  });

  for (const transport of TRANSPORTS) {
    it(`an error body carries the request id of its header and log lines (${transport})`, async () => {
      const c = new TestClient(t.url, t.key, transport);
      const res = await c.get('/v1/vms/vm_does_not_exist_000000');
      expect(res.status).toBe(404);
      const id = res.headers['x-request-id'];
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(res.body).toMatchObject({ code: 'not_found', requestId: id });
      const lines = log
        .text()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { reqId?: string; msg: string });
      const mine = lines.filter((l) => l.reqId === id);
      expect(mine.map((l) => l.msg)).toEqual(
        expect.arrayContaining(['incoming request', 'request completed']),
      );
      expect(mine.some((l) => /not found/.test(l.msg))).toBe(true);

      // A client's own id is kept; an unusable one is replaced.
      const own = await c.get('/v1/vms/nope', { headers: { 'x-request-id': 'client-1234' } });
      expect(own.headers['x-request-id']).toBe('client-1234');
      expect(own.body.requestId).toBe('client-1234');
      const bad = await c.get('/v1/vms/nope', { headers: { 'x-request-id': 'a b' } });
      expect(bad.body.requestId).not.toBe('a b');
      expect(bad.body.requestId).toBe(bad.headers['x-request-id']);
    });
  }

  it('a refused storage URL answers with a request id too', async () => {
    const res = await fetch(`${t.url}/storage/x?exp=1&max=1&sig=bad`);
    expect(res.status).toBe(400); // a malformed signature
    const body = (await res.json()) as { requestId?: string };
    expect(body.requestId).toBe(res.headers.get('x-request-id'));
    expect(body.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });
});
