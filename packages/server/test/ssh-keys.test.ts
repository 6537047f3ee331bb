/**
 * `/v1/me/ssh-keys` (contract §4.11) and `GET /v1/pricing` (§4.12) with the FakeRuntime: CRUD
 * over HTTP/1.1 and h2c, fingerprints as `ssh-keygen -l` prints them, duplicates, the per-user
 * limit, isolation between orgs, and the key parser's refusals.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PRICING, parsePricing } from '../src/pricing.js';
import { parseSshPublicKey } from '../src/services/ssh-keys.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

/** SSH wire `string`. */
function sshString(b: Buffer | string): Buffer {
  const body = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

/** A fresh ed25519 public key line made with node:crypto (no ssh-keygen round trip). */
function ed25519Line(comment = ''): string {
  const { publicKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const blob = Buffer.concat([sshString('ssh-ed25519'), sshString(raw)]);
  return `ssh-ed25519 ${blob.toString('base64')}${comment ? ` ${comment}` : ''}`;
}

/** Generates a key with `ssh-keygen`; returns its public line and `ssh-keygen -lf` fingerprint. */
async function sshKeygen(
  dir: string,
  name: string,
  type: string,
  bits?: number,
): Promise<{ line: string; fingerprint: string }> {
  const file = path.join(dir, name);
  const args = ['-q', '-t', type, '-N', '', '-C', `${name}@test`, '-f', file];
  if (bits) args.push('-b', String(bits));
  execFileSync('ssh-keygen', args);
  const line = (await fs.readFile(`${file}.pub`, 'utf8')).trim();
  const printed = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`], {
    encoding: 'utf8',
  });
  return { line, fingerprint: printed.split(' ')[1]! };
}

const keyPath = (fp: string) => `/v1/me/ssh-keys/${encodeURIComponent(fp)}`;

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-ssh-keys-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe.each(TRANSPORTS)('/v1/me/ssh-keys over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let other: TestClient;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    other = api.withKey(await createOrgWithKey(t.server, `other-${transport}`));
  });
  afterAll(async () => {
    api.close();
    other.close();
    await t.cleanup();
  });

  it('adds, lists and deletes a key; the fingerprint is what ssh-keygen -lf prints', async () => {
    const { line, fingerprint } = await sshKeygen(tmp, `ed-${transport}`, 'ed25519');
    expect(fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);

    expect((await api.get('/v1/me/ssh-keys')).body).toEqual({ keys: [] });
    const added = await api.post('/v1/me/ssh-keys', { publicKey: line, name: 'laptop' });
    expect(added.status).toBe(200);
    const stripped = line.split(' ').slice(0, 2).join(' ');
    expect(added.body).toEqual({
      fingerprint,
      publicKey: stripped,
      name: 'laptop',
      createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });

    const listed = await api.get('/v1/me/ssh-keys');
    expect(listed.status).toBe(200);
    expect(listed.body).toEqual({ keys: [added.body] });

    const del = await api.del(keyPath(fingerprint));
    expect(del.status).toBe(200);
    expect(del.body).toEqual({ id: fingerprint, deleted: true });
    expect((await api.get('/v1/me/ssh-keys')).body).toEqual({ keys: [] });
    const again = await api.del(keyPath(fingerprint));
    expect(again.status).toBe(404);
    expect(again.body).toMatchObject({ code: 'not_found', error: expect.any(String) });
  });

  it('takes every contract key type with the fingerprint ssh-keygen prints; name is optional', async () => {
    const made = [
      await sshKeygen(tmp, `rsa-${transport}`, 'rsa', 2048),
      await sshKeygen(tmp, `p256-${transport}`, 'ecdsa', 256),
      await sshKeygen(tmp, `p384-${transport}`, 'ecdsa', 384),
      await sshKeygen(tmp, `p521-${transport}`, 'ecdsa', 521),
    ];
    for (const { line, fingerprint } of made) {
      const res = await api.post('/v1/me/ssh-keys', { publicKey: line });
      expect(res.status, line.slice(0, 30)).toBe(200);
      expect(res.body.fingerprint).toBe(fingerprint);
      expect(res.body).not.toHaveProperty('name');
    }
    const { keys } = (await api.get('/v1/me/ssh-keys')).body;
    expect(keys.map((k: { fingerprint: string }) => k.fingerprint)).toEqual(
      made.map((m) => m.fingerprint),
    );
    for (const { fingerprint } of made)
      expect((await api.del(keyPath(fingerprint))).status).toBe(200);
  });

  it('refuses a duplicate with 409, also when another org holds the key', async () => {
    const line = ed25519Line('first');
    expect((await api.post('/v1/me/ssh-keys', { publicKey: line })).status).toBe(200);
    // Same key, other comment: same fingerprint.
    const dup = await api.post('/v1/me/ssh-keys', { publicKey: `${line} other-comment` });
    expect(dup.status).toBe(409);
    expect(dup.body).toMatchObject({ code: 'conflict', error: expect.any(String) });
    const cross = await other.post('/v1/me/ssh-keys', { publicKey: line });
    expect(cross.status).toBe(409);
    const fp = parseSshPublicKey(line).fingerprint;
    expect((await api.del(keyPath(fp))).status).toBe(200);
  });

  it('keeps keys per org: another org neither lists nor deletes them', async () => {
    const line = ed25519Line();
    const added = await api.post('/v1/me/ssh-keys', { publicKey: line });
    expect(added.status).toBe(200);
    const fp = added.body.fingerprint as string;
    expect((await other.get('/v1/me/ssh-keys')).body).toEqual({ keys: [] });
    const del = await other.del(keyPath(fp));
    expect(del.status).toBe(404);
    expect(del.body).toMatchObject({ code: 'not_found' });
    expect((await api.get('/v1/me/ssh-keys')).body.keys).toHaveLength(1);
    expect((await api.del(keyPath(fp))).status).toBe(200);
  });

  it('holds at most 32 keys per user; the 33rd gets 429 quota_exceeded', async () => {
    const fps: string[] = [];
    for (let i = 0; i < 32; i++) {
      const res = await api.post('/v1/me/ssh-keys', { publicKey: ed25519Line(), name: `k${i}` });
      expect(res.status).toBe(200);
      fps.push(res.body.fingerprint);
    }
    const over = await api.post('/v1/me/ssh-keys', { publicKey: ed25519Line() });
    expect(over.status).toBe(429);
    expect(over.body).toMatchObject({
      code: 'quota_exceeded',
      dimension: 'ssh_key_count',
      limit: 32,
      usage: 32,
      error: expect.any(String),
    });
    // Other orgs have their own allowance.
    const own = await other.post('/v1/me/ssh-keys', { publicKey: ed25519Line() });
    expect(own.status).toBe(200);
    expect((await other.del(keyPath(own.body.fingerprint))).status).toBe(200);
    for (const fp of fps) expect((await api.del(keyPath(fp))).status).toBe(200);
  });

  it('refuses garbage with 400 naming publicKey', async () => {
    const ed = ed25519Line();
    const [, b64] = ed.split(' ');
    const blob = Buffer.from(b64!, 'base64');
    const rsaTyped = Buffer.concat([sshString('ssh-rsa'), blob.subarray(15)]).toString('base64');
    const cases = [
      '',
      'ssh-ed25519',
      'not a key',
      `ssh-dss ${b64}`,
      `ssh-ed25519 ${b64}\nssh-ed25519 ${b64}`,
      `${ed}\n`,
      `ssh-ed25519 ${b64!.slice(0, -4)}`,
      `ssh-ed25519 ${b64}!!`,
      `ssh-rsa ${b64}`,
      `ssh-rsa ${rsaTyped}`,
      `ssh-ed25519 ${Buffer.concat([blob, Buffer.from([0])]).toString('base64')}`,
      `ecdsa-sha2-nistp256 ${Buffer.concat([sshString('ecdsa-sha2-nistp256'), sshString('nistp384'), sshString(randomBytes(97))]).toString('base64')}`,
    ];
    for (const publicKey of cases) {
      const res = await api.post('/v1/me/ssh-keys', { publicKey });
      expect(res.status, JSON.stringify(publicKey).slice(0, 60)).toBe(400);
      expect(res.body).toMatchObject({ code: 'bad_request', field: 'publicKey' });
    }
    const missing = await api.post('/v1/me/ssh-keys', { name: 'x' });
    expect(missing.status).toBe(400);
    expect((await api.get('/v1/me/ssh-keys')).body).toEqual({ keys: [] });
  });

  it('needs an API key', async () => {
    expect((await api.get('/v1/me/ssh-keys', { noAuth: true })).status).toBe(401);
    const post = await api.post('/v1/me/ssh-keys', { publicKey: ed25519Line() }, { noAuth: true });
    expect(post.status).toBe(401);
  });

  it('answers GET /v1/pricing without an API key', async () => {
    const res = await api.get('/v1/pricing', { noAuth: true });
    expect(res.status).toBe(200);
    expect(res.body).toEqual(DEFAULT_PRICING);
  });
});

describe('pricing from server config', () => {
  const custom = {
    compute: {
      tiers: [
        { tier: 1, fromVcpuHours: 0, toVcpuHours: 1000, ratePerVcpuHour: '0.09' },
        { tier: 2, fromVcpuHours: 1000, toVcpuHours: null, ratePerVcpuHour: '0.07' },
      ],
    },
    volumeStorage: { ratePerGiBMonth: '0.09' },
  };

  it('serves the configured prices', async () => {
    const t = await startTestServer({ pricing: parsePricing(JSON.stringify(custom)) });
    try {
      const res = await new TestClient(t.url, undefined).get('/v1/pricing');
      expect(res.status).toBe(200);
      expect(res.body).toEqual(custom);
    } finally {
      await t.cleanup();
    }
  });

  it('refuses a malformed FASTVM_PRICING', () => {
    expect(() => parsePricing('{')).toThrow(/not JSON/);
    expect(() => parsePricing('{"compute":{"tiers":[]}}')).toThrow(/FASTVM_PRICING/);
    const bad = structuredClone(custom);
    bad.compute.tiers[0]!.ratePerVcpuHour = 'cheap';
    expect(() => parsePricing(JSON.stringify(bad))).toThrow(/FASTVM_PRICING/);
  });
});
