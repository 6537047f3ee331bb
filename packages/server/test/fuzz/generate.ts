/**
 * The fuzzer's generators: a seeded PRNG, and malformed or hostile requests built from the
 * server's own route list (wrong types, missing and extra fields, huge numbers, deep nesting,
 * invalid UTF-8, traversal in ids and names, 10 MiB bodies, wrong methods, content types and
 * keys). Everything is derived from the seed, so a seed replays the same requests.
 */

/** A small seeded PRNG (xorshift32). Not for anything but tests. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0 || 0x9e3779b9;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state / 0x100000000;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** One route as the app declares it (`/v1/vms/{id}/exec`). */
export interface RouteSpec {
  method: string;
  path: string;
  /** Needs no API key. */
  public: boolean;
}

/** A request to send: either transport, or the raw socket. */
export interface FuzzRequest {
  method: string;
  /** Path and query, already encoded. */
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  /** Which key it carries, for the invariants. */
  auth: 'own' | 'foreign' | 'none' | 'bogus';
  /** The route it was made from (undefined for made-up paths). */
  route?: RouteSpec;
  /** Whose object the `{id}` path parameter names (`other`: nobody's, or no such parameter). */
  refOwner: 'own' | 'foreign' | 'other';
  /** Short description for findings. */
  note: string;
}

/** What the generators may put in requests. */
export interface FuzzContext {
  routes: readonly RouteSpec[];
  ownKey: string;
  foreignKey: string;
  /** Ids and names of the caller org's objects. */
  ownRefs: readonly string[];
  /** Ids and names of another org's objects. */
  foreignRefs: readonly string[];
}

const MiB = 1024 * 1024;

/** Path parameters that are not ids: traversal, encodings, lengths, injections. */
const HOSTILE_REFS: readonly string[] = [
  '00000000-0000-4000-8000-000000000000',
  'vm_does_not_exist_000000',
  '..',
  '%2e%2e',
  '..%2F..%2Fetc%2Fpasswd',
  '..%252F..%252Fetc',
  '%2Fetc%2Fpasswd',
  '....%2F%2F',
  '%00',
  'a%00b',
  '%',
  '%ZZ',
  '%E0%A4%A',
  '%FF%FE',
  '%C0%AE%C0%AE',
  '%F0%9F%92%A9',
  '%E5%90%8D%E5%89%8D',
  '%E2%80%AE',
  'NUL',
  'con',
  '%24%7Bjndi%3Aldap%3A%2F%2Fx%7D',
  "'%20OR%201%3D1%20--",
  '%3Cscript%3E',
  '%5C..%5C',
  '%3B',
  '%3F',
  '%23',
  '%20',
  '~',
  '*',
  '-1',
  '0',
  '1e999',
  'a'.repeat(300),
  'a'.repeat(3000),
];

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'SEARCH', 'PROPFIND'];

const CONTENT_TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/json; charset=utf-16',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/octet-stream',
  'application/x-ndjson',
  '*/*',
  'application/json;;;',
  '',
];

const ACCEPTS = ['application/json', 'application/x-ndjson', '*/*', 'text/html', 'x/y;q=2'];

const STRINGS: readonly string[] = [
  '',
  ' ',
  'x',
  'c1m2',
  'c8m16',
  'c99m999',
  'open',
  'restricted',
  'tcp',
  'udp',
  'pause',
  'delete',
  '::/0',
  '10.0.0.0/8',
  '2001:db8::/129',
  '/root/x',
  '../../../../etc/passwd',
  '/dev/zero',
  '\u0000',
  '\u202e\u0644',
  '💩'.repeat(40),
  'a'.repeat(5000),
  'name with  spaces\t\n',
  '${HOME}',
  '$(reboot)',
  '`id`',
  '%s%n%x',
  'http://127.0.0.1/storage/x',
];

const NUMBERS: readonly number[] = [
  0,
  -0,
  1,
  -1,
  1.5,
  65535,
  65536,
  86400,
  86401,
  2 ** 31,
  2 ** 53 + 2,
  -(2 ** 63),
  1e308,
  5e-324,
  Number.MAX_SAFE_INTEGER,
];

/** Field names the routes know, plus a few that no route does. */
const FIELDS = [
  'machineType',
  'snapshotId',
  'name',
  'diskGiB',
  'firewall',
  'metadata',
  'envVars',
  'ttl',
  'volumes',
  'bucketMounts',
  'command',
  'timeoutSec',
  'stdin',
  'mode',
  'ingress',
  'path',
  'url',
  'vmId',
  'seconds',
  'action',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'x'.repeat(300),
];

/** Commands the FakeRuntime's shell finishes at once (no `sleep`, no `head -c <huge>`). */
const COMMANDS = ['echo', 'true', 'false', 'cat', 'printf', 'uname', 'hostname', 'exit', 'nope'];

/** A random JSON value, at most `depth` levels deep. */
export function jsonValue(rng: Rng, depth = 3): unknown {
  const kind = rng.int(depth > 0 ? 9 : 6);
  switch (kind) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
    case 3:
      return rng.pick(NUMBERS);
    case 4:
    case 5:
      return rng.pick(STRINGS);
    case 6:
    case 7:
      return Array.from({ length: rng.int(4) }, () => jsonValue(rng, depth - 1));
    default: {
      const obj: Record<string, unknown> = {};
      for (let i = rng.int(4); i > 0; i--) obj[rng.pick(FIELDS)] = jsonValue(rng, depth - 1);
      return obj;
    }
  }
}

/** A plausible body for a route, which mutations then break. */
function seedBody(rng: Rng, route: RouteSpec, refs: readonly string[]): Record<string, unknown> {
  const key = `${route.method} ${route.path}`;
  const ref = (): string => rng.pick(refs);
  switch (key) {
    case 'POST /v1/vms':
      return rng.chance(0.3)
        ? { snapshotId: ref(), name: rng.pick(STRINGS) }
        : {
            machineType: rng.pick(['c1m2', 'c2m4', 'c4m8', 'c8m16']),
            name: `fuzz-${rng.int(1000)}`,
            ...(rng.chance(0.3) ? { diskGiB: rng.pick([0, 10, 20, 2048]) } : {}),
            ...(rng.chance(0.3)
              ? { firewall: { mode: 'restricted', ingress: [{ protocol: 'tcp', portStart: 22 }] } }
              : {}),
            ...(rng.chance(0.2) ? { metadata: { team: 'fuzz' } } : {}),
            ...(rng.chance(0.1) ? { ttl: { seconds: 3600, action: 'pause' } } : {}),
          };
    case 'PATCH /v1/vms/{id}':
      return { name: `renamed-${rng.int(1000)}`, metadata: { k: 'v' } };
    case 'POST /v1/vms/{id}/exec':
      return {
        command: rng.chance(0.3)
          ? `${rng.pick(COMMANDS)} ${rng.pick(STRINGS)}`
          : [rng.pick(COMMANDS), rng.pick(STRINGS)],
        ...(rng.chance(0.3) ? { timeoutSec: rng.pick([1, 5, 600]) } : {}),
        ...(rng.chance(0.2) ? { stdin: Buffer.from(rng.pick(STRINGS)).toString('base64') } : {}),
      };
    case 'PUT /v1/vms/{id}/firewall':
    case 'PATCH /v1/vms/{id}/firewall':
      return {
        mode: rng.pick(['open', 'restricted']),
        ingress: [{ protocol: 'udp', portStart: 1000, portEnd: 2000, sourceCidrs: ['::/0'] }],
      };
    case 'POST /v1/vms/{id}/files/presign':
      return { path: '/root/file' };
    case 'POST /v1/vms/{id}/files/fetch':
      return { url: 'http://127.0.0.1:1/storage/x?exp=1&max=1&sig=x', path: '/root/file' };
    case 'POST /v1/snapshots':
      return { vmId: ref(), name: `snap-${rng.int(1000)}` };
    case 'PATCH /v1/snapshots/{id}':
      return { name: `snap-renamed-${rng.int(1000)}`, metadata: {} };
    default:
      return {};
  }
}

/** Breaks a body: drops, adds and retypes fields, or replaces it. */
function mutateBody(rng: Rng, body: Record<string, unknown>): unknown {
  const out: Record<string, unknown> = { ...body };
  const keys = Object.keys(out);
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const op = rng.int(6);
    if (op === 0 && keys.length > 0) delete out[rng.pick(keys)];
    else if (op === 1) out[rng.pick(FIELDS)] = jsonValue(rng);
    else if (op === 2 && keys.length > 0) out[rng.pick(keys)] = jsonValue(rng);
    else if (op === 3 && keys.length > 0) out[rng.pick(keys)] = rng.pick(NUMBERS);
    else if (op === 4) return jsonValue(rng);
    else if (keys.length > 0) out[rng.pick(keys)] = [jsonValue(rng, 1), jsonValue(rng, 1)];
  }
  return out;
}

/** Bodies no JSON serialiser would write. */
function rawJsonText(rng: Rng, body: Record<string, unknown>): string {
  const json = JSON.stringify(body);
  switch (rng.int(14)) {
    case 0:
      return json.replace(/}$/, ',"diskGiB":1e400}');
    case 1:
      return json.replace(/}$/, ',"timeoutSec":-1e400}');
    case 2:
      return json.replace(/}$/, ',"name":"\\ud800\\udc00\\ud800"}');
    case 3:
      return json.replace(/^{/, '{"__proto__":{"polluted":1},');
    case 4:
      return json.replace(/^{/, '{"constructor":{"prototype":{"polluted":1}},');
    case 5:
      return json.replace(/}$/, `,"name":"a","name":${JSON.stringify(rng.pick(STRINGS))}}`);
    case 6:
      return json.slice(0, rng.int(json.length));
    case 7:
      return `${json}garbage`;
    case 8:
      return `\ufeff${json}`;
    case 9:
      return rng.pick(['', ' ', '\n\t', 'null', '[]', '0', 'true', '"x"', '{}', '{}{}']);
    case 10:
      return `{"metadata":{"k":${'['.repeat(5000)}${']'.repeat(5000)}}}`;
    case 11:
      return `${'{"a":'.repeat(3000)}1${'}'.repeat(3000)}`;
    case 12:
      return json.replace(/}$/, ',"diskGiB":123456789012345678901234567890}');
    default:
      return json.replace(/"/g, "'");
  }
}

/** Bytes that are not UTF-8 inside a JSON string (overlong, lone continuation, surrogates). */
function invalidUtf8(rng: Rng): Buffer {
  const bad = rng.pick([
    [0xff, 0xfe],
    [0xc0, 0xaf],
    [0xe0, 0x80, 0xaf],
    [0xed, 0xa0, 0x80],
    [0x80, 0x80],
    [0xf8, 0x88, 0x80, 0x80, 0x80],
    [0xc3],
  ]);
  return Buffer.concat([
    Buffer.from(`{"name":"a`),
    Buffer.from(bad),
    Buffer.from(`b","metadata":{"k`),
    Buffer.from(bad),
    Buffer.from(`":"v"}}`),
  ]);
}

/** The 10 MiB (and deeply nested) bodies, built once. */
export class BigBodies {
  #cache = new Map<string, Buffer>();

  get(kind: 'exec' | 'string' | 'garbage' | 'nested'): Buffer {
    let body = this.#cache.get(kind);
    if (!body) {
      body = build(kind);
      this.#cache.set(kind, body);
    }
    return body;
  }
}

function build(kind: 'exec' | 'string' | 'garbage' | 'nested'): Buffer {
  switch (kind) {
    case 'exec':
      // 7.5 MiB of stdin is 10 MiB of base64: under the exec limit (16 MiB).
      return Buffer.from(
        JSON.stringify({ command: ['cat'], stdin: Buffer.alloc(7.5 * MiB, 1).toString('base64') }),
      );
    case 'string':
      return Buffer.from(JSON.stringify({ name: 'n'.repeat(10 * MiB), command: ['true'] }));
    case 'garbage': {
      const buf = Buffer.alloc(10 * MiB);
      for (let i = 0; i < buf.length; i++) buf[i] = (i * 2654435761) >>> 24;
      return buf;
    }
    case 'nested':
      return Buffer.from(`{"command":${'['.repeat(MiB)}${']'.repeat(MiB)}}`);
  }
}

/** Fills the `{param}`s of a route path. */
function fillPath(rng: Rng, path: string, ref: string): string {
  return path.replace(/\{(\w+)\}/g, (_m, name: string) =>
    name === 'id' ? ref : rng.pick(['x', '..', '%2F', 'svc-1', 'a'.repeat(200), '%00']),
  );
}

/** A path variation: traversal, doubled or trailing slashes, matrix params, fragments. */
function mutatePath(rng: Rng, path: string): string {
  switch (rng.int(9)) {
    case 0:
      return `${path}/..`;
    case 1:
      return `${path}/../../../etc/passwd`;
    case 2:
      return path.replace('/v1/', '//v1//');
    case 3:
      return `${path}/`;
    case 4:
      return path.toUpperCase();
    case 5:
      return `${path};jsessionid=x`;
    case 6:
      return `${path}#frag`;
    case 7:
      return path.replace(/\//g, '%2F');
    default:
      return `${path}/extra/segments`;
  }
}

/** A query string: filters, prototype keys, bad escapes, repeats. */
function query(rng: Rng): string {
  const parts = [
    'status=running',
    'status=running,error,,%20',
    'status=running&status=nope',
    'metadata.team=fuzz',
    'metadata[team]=fuzz',
    'metadata.__proto__=x',
    '__proto__[polluted]=1',
    'constructor.prototype.polluted=1',
    'session=fvc_x',
    'rows=-1&cols=1e999',
    'a=%ZZ',
    `long=${'q'.repeat(4000)}`,
    '&&&==&',
    'x[]=1&x[]=2',
  ];
  return `?${Array.from({ length: 1 + rng.int(3) }, () => rng.pick(parts)).join('&')}`;
}

/** Headers for a key choice. */
function authHeaders(
  rng: Rng,
  ctx: FuzzContext,
  auth: FuzzRequest['auth'],
): Record<string, string> {
  switch (auth) {
    case 'own':
      return rng.chance(0.8)
        ? { 'x-api-key': ctx.ownKey }
        : { authorization: `Bearer ${ctx.ownKey}` };
    case 'foreign':
      return { 'x-api-key': ctx.foreignKey };
    case 'bogus':
      return rng.pick<Record<string, string>>([
        { 'x-api-key': 'fvm_' + 'A'.repeat(32) },
        { 'x-api-key': ' ' },
        { 'x-api-key': `${ctx.ownKey}x` },
        { 'x-api-key': ctx.ownKey.toUpperCase() },
        { authorization: 'Bearer' },
        { authorization: `Basic ${Buffer.from(`u:${ctx.ownKey}`).toString('base64')}` },
        { authorization: `Bearer ${ctx.ownKey} extra` },
        { 'x-api-key': 'k'.repeat(8000) },
      ]);
    default:
      return {};
  }
}

/** One generated request against the app's routes. */
export function fuzzRequest(rng: Rng, ctx: FuzzContext, bigs: BigBodies): FuzzRequest {
  const route = rng.pick(ctx.routes);
  const auth: FuzzRequest['auth'] = rng.pick([
    'own',
    'own',
    'own',
    'own',
    'foreign',
    'none',
    'bogus',
  ]);
  const refKind = rng.int(10);
  const ref =
    refKind < 1
      ? rng.pick(ctx.foreignRefs)
      : refKind < 6
        ? rng.pick(ctx.ownRefs)
        : rng.pick(HOSTILE_REFS);
  const encodedRef = refKind < 6 ? encodeURIComponent(ref) : ref;
  let path = fillPath(rng, route.path, encodedRef);
  const pathMutated = rng.chance(0.1);
  if (pathMutated) path = mutatePath(rng, path);
  if (rng.chance(0.15)) path += query(rng);

  const method = rng.chance(0.85) ? route.method : rng.pick(METHODS);
  const headers: Record<string, string> = { ...authHeaders(rng, ctx, auth) };
  if (rng.chance(0.3)) headers.accept = rng.pick(ACCEPTS);
  if (rng.chance(0.1)) headers['x-request-id'] = rng.pick(['ok-1', 'x'.repeat(200), '../..']);

  let body: Buffer | undefined;
  let bodyNote = 'no body';
  const seed = seedBody(rng, route, [...ctx.ownRefs, ...ctx.foreignRefs]);
  const shape = rng.int(100);
  if (shape < 2) {
    const kind = rng.pick(['exec', 'string', 'garbage', 'nested'] as const);
    body = bigs.get(kind);
    bodyNote = `big ${kind} body`;
  } else if (shape < 12) {
    body = Buffer.from(rawJsonText(rng, seed));
    bodyNote = `raw ${body.subarray(0, 60).toString()}`;
  } else if (shape < 16) {
    body = invalidUtf8(rng);
    bodyNote = 'invalid UTF-8';
  } else if (shape < 45) {
    const value = mutateBody(rng, seed);
    body = Buffer.from(JSON.stringify(value) ?? 'null');
    bodyNote = `mutated ${body.subarray(0, 60).toString()}`;
  } else if (shape < 85 && route.method !== 'GET' && route.method !== 'DELETE') {
    body = Buffer.from(JSON.stringify(seed));
    bodyNote = `seed ${body.subarray(0, 60).toString()}`;
  }
  if (body !== undefined || rng.chance(0.2)) {
    const type = rng.chance(0.75) ? 'application/json' : rng.pick(CONTENT_TYPES);
    if (type !== '') headers['content-type'] = type;
  }
  return {
    method,
    path,
    headers,
    ...(body !== undefined ? { body } : {}),
    auth,
    route: pathMutated ? undefined : route,
    refOwner:
      !route.path.includes('{id}') || pathMutated
        ? 'other'
        : refKind < 1
          ? 'foreign'
          : refKind < 6
            ? 'own'
            : 'other',
    note: `${auth} key, ${bodyNote}`,
  };
}
