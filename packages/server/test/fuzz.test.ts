/**
 * API fuzzer: seeded, generated malformed and hostile requests against every route of a real
 * server (FakeRuntime), over HTTP/1.1 and h2c, on the raw socket, as WebSocket upgrades and as
 * another org. Invariants on every answer:
 * - no 5xx (501 `not_implemented` is the documented answer of the routes not built yet);
 * - an answer, or a closed connection, within 5 s;
 * - every error in the catalog's shape: JSON `{error, code}` with the code's status;
 * - no error-level log line; the server healthy at the end.
 * Another org's key on the first org's ids and names is a 404 on every route and changes nothing.
 *
 * `FUZZ_SEED=<n>` replays a run (findings are reported with the seed); `FUZZ_SCALE=<k>`
 * multiplies the number of generated requests.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CATALOG } from '../src/errors.js';
import {
  BigBodies,
  Rng,
  fuzzRequest,
  type FuzzContext,
  type FuzzRequest,
  type RouteSpec,
} from './fuzz/generate.js';
import { WireClient, rawExchange, type FuzzResponse, type RawExchange } from './fuzz/wire.js';
import {
  TestClient,
  createOrgWithKey,
  sleep,
  startTestServer,
  type TestServer,
  type Transport,
} from './helpers.js';

const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const DEADLINE_MS = 5000;
/** Requests in flight at once (both transports share them). */
const CONCURRENCY = 8;

/** Problems found by one test, reported together, with the seed that replays them. */
class Findings {
  readonly list: string[] = [];

  add(what: string): void {
    if (this.list.length < 50) this.list.push(what);
  }

  assertNone(): void {
    expect(this.list, `fuzz findings; replay with FUZZ_SEED=${SEED}`).toEqual([]);
  }
}

/** Why an answer breaks the invariants (status and error shape), or undefined. */
function answerProblem(
  method: string,
  status: number,
  headers: Record<string, string>,
  text: string,
): string | undefined {
  if (status === 101) return 'switched protocols';
  if (status < 400) {
    const type = headers['content-type'] ?? '';
    if (method !== 'HEAD' && text !== '' && !/^application\/(json|x-ndjson)/.test(type)) {
      return `${status} with content-type ${JSON.stringify(type)}`;
    }
    return undefined;
  }
  if (method === 'HEAD') return status >= 500 && status !== 501 ? `HEAD ${status}` : undefined;
  if (!/^application\/json/.test(headers['content-type'] ?? '')) {
    return `${status} with content-type ${JSON.stringify(headers['content-type'])}: ${text.slice(0, 120)}`;
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `${status} with a body that is not JSON: ${text.slice(0, 120)}`;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return `${status} with a body that is not an object`;
  }
  const { error, code } = body as { error?: unknown; code?: unknown };
  if (typeof error !== 'string' || error === '') return `${status} without an error message`;
  if (typeof code !== 'string' || !Object.hasOwn(ERROR_CATALOG, code)) {
    return `${status} with unknown code ${JSON.stringify(code)}`;
  }
  if (ERROR_CATALOG[code as keyof typeof ERROR_CATALOG] !== status) {
    return `code ${code} sent with status ${status}`;
  }
  if (status >= 500 && code !== 'not_implemented') return `${status} ${code}: ${error}`;
  return undefined;
}

/** Runs `tasks` with at most `limit` in flight. */
async function inPool(tasks: Array<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

const short = (s: string, n = 100): string => (s.length > n ? `${s.slice(0, n)}…` : s);

/** A server whose error-level log lines are kept (each is a finding). */
async function startFuzzServer(): Promise<{ t: TestServer; logErrors: string[] }> {
  const logErrors: string[] = [];
  const logger = pino({ level: 'error' }, { write: (line: string) => void logErrors.push(line) });
  return { t: await startTestServer({ logger }), logErrors };
}

/** The app's routes, from its OpenAPI document plus the two it leaves out. */
async function appRoutes(api: TestClient): Promise<RouteSpec[]> {
  const doc = (await api.get('/openapi.json')).body as {
    paths: Record<string, Record<string, { security?: unknown[] }>>;
  };
  const routes: RouteSpec[] = [];
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      routes.push({ method: method.toUpperCase(), path, public: op.security?.length === 0 });
    }
  }
  routes.push({ method: 'GET', path: '/v1/vms/{id}/console/ws', public: true });
  routes.push({ method: 'GET', path: '/openapi.json', public: true });
  return routes;
}

/** The server answers, launches and runs a command over both transports. */
async function assertHealthy(t: TestServer, findings: Findings): Promise<void> {
  for (const transport of ['h1', 'h2'] as const) {
    const api = new TestClient(t.url, t.key, transport);
    const health = await api.get('/healthz');
    if (health.status !== 200) findings.add(`${transport} /healthz afterwards: ${health.status}`);
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    const run = await api.post(`/v1/vms/${vm.body?.id}/exec`, { command: ['echo', 'ok'] });
    if (run.status !== 200 || run.body?.stdout !== 'ok\n') {
      findings.add(`${transport} launch + exec afterwards: ${vm.status} ${run.status}`);
    }
    await api.del(`/v1/vms/${vm.body?.id}`);
    api.close();
  }
}

describe(`API fuzzer (FUZZ_SEED=${SEED})`, () => {
  let t: TestServer;
  let logErrors: string[];
  let wire: WireClient;
  let ctx: FuzzContext;
  let routes: RouteSpec[];
  let a: TestClient;

  beforeAll(async () => {
    ({ t, logErrors } = await startFuzzServer());
    a = new TestClient(t.url, t.key);
    const foreignKey = await createOrgWithKey(t.server, 'fuzz-other');
    const b = a.withKey(foreignKey);
    routes = await appRoutes(a);
    const own: string[] = [];
    for (const name of ['fz-one', 'fz-two', 'fz-dup', 'fz-dup']) {
      const vm = (await a.post('/v1/vms', { machineType: 'c1m2', name })).body;
      own.push(vm.id, name);
    }
    const snap = (await a.post('/v1/snapshots', { vmId: own[0], name: 'fz-snap' })).body;
    own.push(snap.id, 'fz-snap');
    const theirs = (await b.post('/v1/vms', { machineType: 'c1m2', name: 'fz-theirs' })).body;
    const theirSnap = (await b.post('/v1/snapshots', { vmId: theirs.id, name: 'fz-their-snap' }))
      .body;
    ctx = {
      routes,
      ownKey: t.key,
      foreignKey,
      ownRefs: [...new Set(own)],
      foreignRefs: [theirs.id, 'fz-theirs', theirSnap.id, 'fz-their-snap'],
    };
    wire = new WireClient(t.url, DEADLINE_MS);
  });

  afterAll(async () => {
    wire?.close();
    a?.close();
    await t?.cleanup();
  });

  it('enumerates the routes', () => {
    expect(routes.length).toBeGreaterThan(40);
    expect(routes).toContainEqual({ method: 'POST', path: '/v1/vms/{id}/exec', public: false });
  });

  it('answers generated requests over HTTP/1.1 and h2c within the invariants', async () => {
    const findings = new Findings();
    const rng = new Rng(SEED);
    const bigs = new BigBodies();
    const count = Math.round(1600 * SCALE);
    const requests = Array.from({ length: count }, () => fuzzRequest(rng, ctx, bigs));
    let unsendable = 0;
    await inPool(
      requests.map((req, i) => async () => {
        const transport: Transport = i % 2 === 0 ? 'h1' : 'h2';
        const res = await wire.send(transport, req);
        if (res.unsendable) {
          unsendable++;
          return;
        }
        const problem = judge(req, res);
        if (problem) {
          findings.add(
            `#${i} ${transport} ${req.method} ${short(req.path)} (${req.note}): ${problem}`,
          );
        }
      }),
      CONCURRENCY,
    );
    expect(unsendable, 'requests the clients refused to send').toBeLessThan(count / 20);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });

  it('answers malformed HTTP/1.1 in the error shape, or closes', async () => {
    const findings = new Findings();
    const key = `X-API-Key: ${t.key}\r\n`;
    const cases: Array<{
      name: string;
      bytes: string | Buffer;
      silent?: boolean;
      status?: number;
      endWrite?: boolean;
    }> = [
      { name: 'garbage request line', bytes: 'GARBAGE\r\n\r\n', status: 400 },
      { name: 'unknown method', bytes: 'FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n', status: 400 },
      { name: 'HTTP/9.9', bytes: 'GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n' },
      {
        name: 'header without colon',
        bytes: 'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
        status: 400,
      },
      {
        name: 'NUL in a header',
        bytes: 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n',
        status: 400,
      },
      {
        name: 'obs-fold header',
        bytes: 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n',
        status: 400,
      },
      {
        name: '20 KB header',
        bytes: `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
        status: 431,
      },
      {
        name: '20 KB API key',
        bytes: `GET /v1/vms HTTP/1.1\r\nHost: x\r\nX-API-Key: ${'k'.repeat(20_000)}\r\n\r\n`,
        status: 431,
      },
      {
        name: 'Content-Length not a number',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Length: abc\r\n\r\n{}`,
        status: 400,
      },
      {
        name: 'negative Content-Length',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Length: -5\r\n\r\n{}`,
        status: 400,
      },
      {
        name: 'two Content-Lengths',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}`,
        status: 400,
      },
      {
        name: 'Content-Length and chunked',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}`,
        status: 400,
      },
      {
        name: 'obfuscated Transfer-Encoding',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Transfer-Encoding: xchunked\r\n\r\n{}`,
        status: 400,
      },
      {
        name: 'bad chunk size',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
      },
      {
        name: 'body shorter than Content-Length',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Length: 100\r\n\r\n{}`,
        silent: true,
        endWrite: true,
      },
      {
        name: 'request line, then EOF',
        bytes: 'GET /healthz HTTP/1.1\r\n',
        silent: true,
        endWrite: true,
      },
      { name: 'no Host header', bytes: 'GET /healthz HTTP/1.1\r\n\r\n', status: 400 },
      { name: 'HTTP/1.0 without Host', bytes: 'GET /healthz HTTP/1.0\r\n\r\n', status: 200 },
      {
        name: 'absolute-form target',
        bytes: 'GET http://evil.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n',
      },
      { name: 'asterisk-form target', bytes: 'OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n' },
      { name: 'bad percent escape', bytes: `GET /v1/vms/%ZZ HTTP/1.1\r\nHost: x\r\n${key}\r\n` },
      {
        name: 'raw 0xFF in the path',
        bytes: Buffer.concat([
          Buffer.from('GET /v1/vms/'),
          Buffer.from([0xff, 0xfe]),
          Buffer.from(` HTTP/1.1\r\nHost: x\r\n${key}\r\n`),
        ]),
      },
      {
        name: 'invalid UTF-8 in the API key',
        bytes: Buffer.concat([
          Buffer.from('GET /v1/vms HTTP/1.1\r\nHost: x\r\nX-API-Key: '),
          Buffer.from([0xc0, 0xaf, 0xff]),
          Buffer.from('\r\n\r\n'),
        ]),
        status: 401,
      },
      {
        name: 'CONNECT',
        bytes: 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n',
        status: 404,
      },
      { name: 'diverging HTTP/2 preface', bytes: 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n', status: 400 },
      {
        name: 'HTTP/2 preface, then garbage',
        bytes: Buffer.concat([
          Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
          Buffer.alloc(64, 0xff),
        ]),
        silent: true,
      },
      {
        name: 'Upgrade: h2c',
        bytes:
          'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
        status: 200,
      },
      {
        name: 'Expect: 100-continue',
        bytes: `POST /v1/vms HTTP/1.1\r\nHost: x\r\n${key}Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
        status: 400,
      },
      {
        name: '500 headers',
        bytes: `GET /healthz HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 500 }, (_, i) => `X-${i}: v\r\n`).join('')}\r\n`,
        status: 200,
      },
      {
        name: 'valid request, then garbage',
        bytes: 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
        status: 200,
      },
    ];
    await inPool(
      cases.map((c) => async () => {
        const res = await rawExchange(t.url, c.bytes, {
          deadlineMs: DEADLINE_MS,
          endWrite: c.endWrite,
        });
        const problem = rawProblem(res, { silent: c.silent, status: c.status });
        if (problem) findings.add(`raw ${c.name}: ${problem}`);
      }),
      CONCURRENCY,
    );
    // The answer after a pipelined response comes once that response is out.
    const piped = await rawExchange(
      t.url,
      'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
      { deadlineMs: DEADLINE_MS, untilClose: true },
    );
    const statuses = [...piped.raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
    if (statuses.join() !== '200,400') findings.add(`pipelined then garbage: ${statuses.join()}`);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });

  it('upgrades to a WebSocket only on the console path; elsewhere the route answers as usual', async () => {
    const findings = new Findings();
    // GETs address one VM; the other methods (DELETE among them) another.
    const vmId = await freshVm();
    const victimId = await freshVm();
    const upgrades = {
      websocket:
        'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n',
      'bad key':
        'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n',
      'bad version':
        'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n',
      h2c: 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n',
      other: 'Connection: keep-alive, Upgrade\r\nUpgrade: IRC/6.9\r\n',
    };
    const paths = routes.map((r) => ({
      method: r.method,
      path: r.path.replace(/\{(\w+)\}/g, (_m, p: string) =>
        p === 'id' ? (r.method === 'GET' ? vmId : victimId) : 'x',
      ),
    }));
    paths.push(
      { method: 'GET', path: '/nope' },
      { method: 'GET', path: '/v1/vms/no-such-vm' },
      { method: 'GET', path: '/storage/x?sig=y' },
    );
    const tasks: Array<() => Promise<void>> = [];
    for (const { method, path } of paths) {
      for (const [kind, headers] of Object.entries(upgrades)) {
        for (const auth of [`X-API-Key: ${t.key}\r\n`, '']) {
          if (method !== 'GET' && kind !== 'websocket') continue;
          tasks.push(async () => {
            const head = `${method} ${path} HTTP/1.1\r\nHost: x\r\n${auth}`;
            const res = await rawExchange(t.url, `${head}${headers}\r\n`, {
              deadlineMs: DEADLINE_MS,
              untilClose: true,
            });
            const what = `${kind} upgrade on ${method} ${short(path)}${auth ? '' : ' (no key)'}`;
            const problem = rawProblem(res, { method });
            if (problem) findings.add(`${what}: ${problem}`);
            else if (!res.closed) findings.add(`${what}: connection left open after the answer`);
            // The console's own answers differ by design (400 without Upgrade, 401 without a token).
            if (method !== 'GET' || problem || path.endsWith('/console/ws')) return;
            const plain = await rawExchange(t.url, `${head}\r\n`, { deadlineMs: DEADLINE_MS });
            if (plain.status !== res.status) {
              findings.add(`${what}: ${res.status}, without Upgrade ${plain.status}`);
            }
          });
        }
      }
    }
    // A body cannot ride along: Node hands it to the new protocol, so the route would not see it.
    tasks.push(async () => {
      const body = '{"machineType":"c1m2"}';
      const res = await rawExchange(
        t.url,
        `POST /v1/vms HTTP/1.1\r\nHost: x\r\nX-API-Key: ${t.key}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n${upgrades.websocket}\r\n${body}`,
        { deadlineMs: DEADLINE_MS },
      );
      if (res.status !== 400) findings.add(`upgrade with a body: ${res.status} ${res.body}`);
    });
    await inPool(tasks, CONCURRENCY);
    expect(tasks.length).toBeGreaterThan(100);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });

  it('refuses console tokens that are missing, wrong, used or for another VM, and bad handshakes', async () => {
    const findings = new Findings();
    // The generated requests may have deleted, paused or renamed the fixtures.
    const vmId = await freshVm();
    const other = await freshVm();
    const token = async (vm = vmId): Promise<string> =>
      (await a.post(`/v1/vms/${vm}/console-token`)).body.token;
    const handshake = (path: string, extra = ''): string =>
      `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`;
    const ws = `/v1/vms/${vmId}/console/ws`;
    const expectStatus = async (
      what: string,
      bytes: string,
      status: number,
    ): Promise<RawExchange> => {
      const res = await rawExchange(t.url, bytes, { deadlineMs: DEADLINE_MS });
      const problem = status === 101 ? undefined : rawProblem(res, {});
      if (res.status !== status || problem)
        findings.add(`${what}: ${res.status} ${problem ?? ''} ${short(res.body)}`);
      return res;
    };
    await expectStatus('no token', handshake(ws), 401);
    await expectStatus('empty token', handshake(`${ws}?session=`), 401);
    await expectStatus('made-up token', handshake(`${ws}?session=fvc_${'A'.repeat(32)}`), 401);
    await expectStatus('huge token', handshake(`${ws}?session=${'A'.repeat(1500)}`), 401);
    await expectStatus(
      'token for another VM',
      handshake(`${ws}?session=${await token(other)}`),
      401,
    );
    await expectStatus(
      'unknown VM in the path',
      handshake(`/v1/vms/nope/console/ws?session=${await token()}`),
      401,
    );
    await expectStatus(
      'POST to the console without a key',
      handshake(`${ws}?session=${await token()}`).replace(/^GET/, 'POST'),
      401,
    );
    const plain = await new TestClient(t.url, undefined, 'h2').get(
      `${ws}?session=${await token()}`,
    );
    if (plain.status !== 400 || plain.body?.code !== 'bad_request')
      findings.add(`console over h2: ${plain.status}`);

    // A refused handshake leaves the token unused.
    const kept = await token();
    const withKept = `${ws}?session=${kept}`;
    await expectStatus(
      'bad Sec-WebSocket-Key',
      handshake(withKept).replace(/Key: .*\r\n/, 'Key: x\r\n'),
      400,
    );
    const version = await expectStatus(
      'bad Sec-WebSocket-Version',
      handshake(withKept).replace('Version: 13', 'Version: 12'),
      400,
    );
    if (version.headers['sec-websocket-version'] !== '13')
      findings.add('no Sec-WebSocket-Version: 13 with the refusal');
    await expectStatus(
      'Upgrade: h2c on the console',
      handshake(withKept).replace('Upgrade: websocket', 'Upgrade: h2c'),
      400,
    );
    await expectStatus(
      'bad subprotocol list',
      handshake(withKept, 'Sec-WebSocket-Protocol: a,,a\r\n'),
      400,
    );
    await expectStatus('good handshake with the kept token', handshake(withKept), 101);
    await expectStatus('the same token again', handshake(withKept), 401);
    findings.assertNone();
  });

  it('survives WebSocket frame abuse and hangs the shell up', async () => {
    const findings = new Findings();
    const vmId = await freshVm();
    const frame = (
      opcode: number,
      payload: Buffer,
      o: { mask?: boolean; fin?: boolean; length?: Buffer } = {},
    ): Buffer => {
      const first = ((o.fin ?? true) ? 0x80 : 0) | opcode;
      const mask = o.mask ?? true;
      const len =
        o.length ??
        (payload.length < 126
          ? Buffer.from([payload.length])
          : Buffer.from([126, payload.length >> 8, payload.length & 0xff]));
      len[0] = len[0]! | (mask ? 0x80 : 0);
      const key = Buffer.from([1, 2, 3, 4]);
      const body = mask ? Buffer.from(payload.map((b, i) => b ^ key[i % 4]!)) : payload;
      return Buffer.concat([Buffer.from([first]), len, mask ? key : Buffer.alloc(0), body]);
    };
    const abuse: Array<[string, Buffer]> = [
      ['invalid UTF-8 text', frame(1, Buffer.from([0xff, 0xfe]))],
      ['unmasked frame', frame(2, Buffer.from('ls\r'), { mask: false })],
      ['reserved opcode', frame(3, Buffer.from('x'))],
      ['fragmented ping', frame(9, Buffer.from('p'), { fin: false })],
      [
        '2 GiB length',
        frame(2, Buffer.alloc(0), { length: Buffer.from([127, 0, 0, 0, 0, 0x80, 0, 0, 0]) }),
      ],
      [
        '64-bit length with the top bit set',
        frame(2, Buffer.alloc(0), { length: Buffer.from([127, 0x80, 0, 0, 0, 0, 0, 0, 0]) }),
      ],
      ['close code 999', frame(8, Buffer.from([0x03, 0xe7]))],
      ['garbage', Buffer.alloc(64, 0xff)],
      [
        'resize with absurd numbers, then close',
        Buffer.concat([
          frame(1, Buffer.from('{"type":"resize","cols":1e999,"rows":-1}')),
          frame(1, Buffer.from('{"type":"resize","cols":{},"rows":[]}')),
          frame(8, Buffer.alloc(0)),
        ]),
      ],
    ];
    for (const [name, bytes] of abuse) {
      const tok = (await a.post(`/v1/vms/${vmId}/console-token`)).body.token;
      const hello = `GET /v1/vms/${vmId}/console/ws?session=${tok} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
      const res = await rawExchange(t.url, Buffer.concat([Buffer.from(hello), bytes]), {
        deadlineMs: DEADLINE_MS,
        untilClose: true,
      });
      if (res.status !== 101) findings.add(`${name}: handshake answered ${res.status}`);
      else if (!res.closed) findings.add(`${name}: the server kept the connection open`);
    }
    const deadline = Date.now() + DEADLINE_MS;
    const open = (): number => (t.runtime.ptys.get(vmId) ?? []).filter((p) => !p.done).length;
    while (open() > 0 && Date.now() < deadline) await sleep(50);
    if (open() > 0) findings.add(`${open()} console shells still running after their clients left`);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });

  it('is healthy afterwards', async () => {
    const findings = new Findings();
    await assertHealthy(t, findings);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });

  /** A new running VM of the first org. */
  async function freshVm(): Promise<string> {
    const res = await a.post('/v1/vms', { machineType: 'c1m2' });
    expect(res.status).toBe(201);
    return res.body.id as string;
  }

  /** The invariants for one generated request. */
  function judge(req: FuzzRequest, res: FuzzResponse): string | undefined {
    if (res.error) return res.error;
    const problem = answerProblem(req.method, res.status, res.headers, res.body.toString('utf8'));
    if (problem) return problem;
    const needsKey = req.route !== undefined && !req.route.public && req.path.startsWith('/v1/');
    // A URL that does not decode is refused (400) before anything looks at the key.
    const refusedUrl = res.status === 400 && !decodes(req.path);
    const keyless = req.auth === 'none' || req.auth === 'bogus';
    if (needsKey && keyless && res.status !== 401 && !refusedUrl) {
      return `${res.status} without a valid key`;
    }
    const crossOrg =
      (req.auth === 'own' && req.refOwner === 'foreign') ||
      (req.auth === 'foreign' && req.refOwner === 'own');
    if (crossOrg && (res.status < 300 || res.status === 409 || res.status === 429)) {
      return `${res.status} on another org's object`;
    }
    return undefined;
  }
});

/** Whether the path part of `url` percent-decodes. */
function decodes(url: string): boolean {
  try {
    decodeURIComponent(url.split('?')[0]!);
    return true;
  } catch {
    return false;
  }
}

/** The invariants for a raw HTTP/1.1 exchange. */
function rawProblem(
  res: RawExchange,
  o: { silent?: boolean; status?: number; method?: string },
): string | undefined {
  if (res.hung) return `no answer and no close within ${DEADLINE_MS} ms`;
  if (res.status === 0) {
    return o.silent
      ? undefined
      : `closed without an answer (${JSON.stringify(short(res.raw, 60))})`;
  }
  const problem = answerProblem(o.method ?? 'GET', res.status, res.headers, res.body);
  if (problem) return problem;
  if (o.status !== undefined && res.status !== o.status)
    return `${res.status}, expected ${o.status}: ${short(res.body)}`;
  return undefined;
}

describe(`cross-org: another org's key on every route (FUZZ_SEED=${SEED})`, () => {
  let t: TestServer;
  let logErrors: string[];
  let a: TestClient;
  let bKey: string;
  let routes: RouteSpec[];
  let vm: { id: string; name: string };
  let snap: { id: string; name: string };

  beforeAll(async () => {
    ({ t, logErrors } = await startFuzzServer());
    a = new TestClient(t.url, t.key);
    bKey = await createOrgWithKey(t.server, 'cross-b');
    routes = await appRoutes(a);
    vm = (await a.post('/v1/vms', { machineType: 'c2m4', name: 'a-secret', metadata: { k: 'v' } }))
      .body;
    await a.post('/v1/vms', { machineType: 'c1m2', name: 'a-dup' });
    await a.post('/v1/vms', { machineType: 'c1m2', name: 'a-dup' });
    snap = (await a.post('/v1/snapshots', { vmId: vm.id, name: 'a-snap' })).body;
    await a.patch(`/v1/vms/${vm.id}`, { ttl: { seconds: 3600, action: 'pause' } });
  });

  afterAll(async () => {
    a?.close();
    await t?.cleanup();
  });

  /** Everything org A can see of its own objects. */
  async function orgAState(): Promise<unknown> {
    const vms = (await a.get('/v1/vms')).body as Array<{ id: string }>;
    const snaps = (await a.get('/v1/snapshots')).body as Array<{ id: string }>;
    return {
      vms,
      snaps,
      each: await Promise.all(vms.map(async (v) => (await a.get(`/v1/vms/${v.id}`)).body)),
      quotas: (await a.get('/v1/org/quotas')).body,
      runtimeVms: vms.map((v) => t.runtime.get(v.id)),
      snapshotsInRuntime: t.runtime.snapshotIds().sort(),
      files: vms.map((v) => t.runtime.listFiles(v.id)),
    };
  }

  it('is a 404 on every VM- and snapshot-scoped route, by id and by name, and changes nothing', async () => {
    const findings = new Findings();
    const rng = new Rng(SEED ^ 0x5bd1e995);
    const before = await orgAState();
    const callsBefore = t.runtime.calls.length;
    // The console WebSocket path answers a plain request with 400 whatever the id (it looks
    // nothing up before the upgrade); its upgrades are checked below.
    const scoped = routes.filter(
      (r) => /^\/v1\/(vms|snapshots)\/\{id\}/.test(r.path) && !r.path.endsWith('/console/ws'),
    );
    expect(scoped.length).toBeGreaterThan(20);
    const bodies: Record<string, unknown> = {
      'PATCH /v1/vms/{id}': { name: 'stolen', metadata: {} },
      'POST /v1/vms/{id}/exec': { command: ['echo', 'pwned'] },
      'PUT /v1/vms/{id}/firewall': { mode: 'open' },
      'PATCH /v1/vms/{id}/firewall': { mode: 'open', ingress: [] },
      'POST /v1/vms/{id}/files/presign': { path: '/root/x' },
      'POST /v1/vms/{id}/files/fetch': { url: 'http://x/storage/y', path: '/root/x' },
      'PATCH /v1/snapshots/{id}': { name: 'stolen' },
      'POST /v1/snapshots/{id}/fork': { count: 1 },
      'POST /v1/vms/{id}/volumes': { volumeId: 'x', mountPath: '/data/x' },
    };
    const tasks: Array<() => Promise<void>> = [];
    const clients: TestClient[] = [];
    for (const transport of ['h1', 'h2'] as const) {
      const b = new TestClient(t.url, bKey, transport);
      for (const route of scoped) {
        const refs = route.path.startsWith('/v1/snapshots')
          ? [snap.id, snap.name]
          : [vm.id, vm.name, 'a-dup'];
        for (const ref of refs) {
          const path = route.path.replace(/\{(\w+)\}/g, (_m, p: string) =>
            p === 'id' ? encodeURIComponent(ref) : 'x',
          );
          const body =
            bodies[`${route.method} ${route.path}`] ??
            (route.method === 'GET' || route.method === 'DELETE' ? undefined : {});
          for (const accept of ['application/json', 'application/x-ndjson']) {
            tasks.push(async () => {
              const res = await b.request(route.method, path, { body, headers: { accept } });
              if (res.status !== 404 || res.body?.code !== 'not_found') {
                findings.add(
                  `${transport} ${route.method} ${path}: ${res.status} ${short(res.text)}`,
                );
              }
            });
          }
        }
      }
      // References inside bodies, and the console WebSocket path.
      for (const ref of [snap.id, snap.name]) {
        tasks.push(async () => {
          const res = await b.post('/v1/vms', { snapshotId: ref, name: 'stolen' });
          if (res.status !== 404 || res.body?.field !== 'snapshotId')
            findings.add(`${transport} restore of ${ref}: ${res.status}`);
        });
      }
      for (const ref of [vm.id, vm.name, 'a-dup']) {
        tasks.push(async () => {
          const res = await b.post('/v1/snapshots', { vmId: ref, name: 'stolen' });
          if (res.status !== 404 || res.body?.field !== 'vmId')
            findings.add(`${transport} snapshot of ${ref}: ${res.status}`);
        });
      }
      // Fuzzed bodies and headers on the same routes: refused, never served.
      for (let i = 0; i < 150 * SCALE; i++) {
        const route = rng.pick(scoped);
        const ref = route.path.startsWith('/v1/snapshots')
          ? rng.pick([snap.id, snap.name])
          : rng.pick([vm.id, vm.name, 'a-dup']);
        const path = route.path.replace(/\{(\w+)\}/g, (_m, p: string) =>
          p === 'id' ? encodeURIComponent(ref) : 'x',
        );
        const body = rng.chance(0.5)
          ? {
              name: rng.pick(['x', '', 'a-dup']),
              command: ['true'],
              mode: rng.pick(['open', 'restricted']),
            }
          : rng.pick([[], 'x', 42, null, { __x: 1 }]);
        tasks.push(async () => {
          const res = await b.request(route.method, path, {
            body: route.method === 'GET' || route.method === 'DELETE' ? undefined : body,
          });
          const problem = answerProblem(route.method, res.status, res.headers, res.text);
          if (problem || res.status < 300 || res.status === 409 || res.status === 429) {
            findings.add(
              `${transport} fuzzed ${route.method} ${path} ${JSON.stringify(body)}: ${res.status} ${problem ?? ''}`,
            );
          }
        });
      }
      clients.push(b);
    }
    await inPool(tasks, CONCURRENCY);
    for (const client of clients) client.close();
    const mine = (await new TestClient(t.url, bKey).post('/v1/vms', { machineType: 'c1m2' })).body;
    const mineToken = (await new TestClient(t.url, bKey).post(`/v1/vms/${mine.id}/console-token`))
      .body.token;
    const ws = await rawExchange(
      t.url,
      `GET /v1/vms/${vm.id}/console/ws?session=${mineToken} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
      { deadlineMs: DEADLINE_MS },
    );
    if (ws.status !== 401) findings.add(`console of A's VM with B's token: ${ws.status}`);
    const touched = t.runtime.calls.slice(callsBefore).filter((c) => c.args[0] === vm.id);
    if (touched.length > 0)
      findings.add(`runtime calls on A's VM: ${touched.map((c) => c.method).join()}`);
    expect(await orgAState()).toEqual(before);
    for (const line of logErrors) findings.add(`error logged: ${short(line, 300)}`);
    findings.assertNone();
  });
});
