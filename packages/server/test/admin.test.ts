import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { API_KEY_CACHE_MS } from '../src/auth.js';
import { TestClient, makeDataDir, startTestServer, type TestServer } from './helpers.js';

/** Runs an admin command in process; rejects with `{ code, output }` on a non-zero exit. */
async function admin(dataDir: string, ...args: string[]): Promise<string> {
  const lines: string[] = [];
  const io = { out: (l: string) => lines.push(l), err: (l: string) => lines.push(l) };
  const code = await runCli([...args, '--data-dir', dataDir], io);
  const output = lines.join('\n');
  if (code !== 0) throw Object.assign(new Error(output), { code, output });
  return output;
}

const keyIn = (out: string): string => {
  const m = /api key \(shown once\): (fvm_\S+)/.exec(out);
  if (!m?.[1]) throw new Error(`no key in: ${out}`);
  return m[1];
};

describe('admin commands', () => {
  let dataDir: string;
  let t: TestServer | undefined;

  beforeAll(async () => {
    dataDir = await makeDataDir();
  });
  afterAll(async () => {
    await t?.server.close();
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('create orgs and keys, set quotas and revoke keys, against a running server', async () => {
    t = await startTestServer({ dataDir });
    const acmeKey = keyIn(await admin(dataDir, 'orgs', 'create', 'acme'));
    const secondKey = keyIn(
      await admin(dataDir, 'keys', 'create', '--org', 'acme', '--name', 'ci'),
    );
    const quotas = await admin(
      dataDir,
      'quotas',
      'set',
      '--org',
      'acme',
      '--vcpu',
      '2',
      '--snapshot-count',
      '1',
    );
    expect(quotas).toMatch(/vcpu\s+0 \/ 2\b/);
    expect(quotas).toMatch(/memory-mib\s+0 \/ 131072 \(default\)/);
    expect(await admin(dataDir, 'orgs', 'list')).toMatch(/acme/);

    const acme = new TestClient(t.url, acmeKey);
    const quota = (await acme.get('/v1/org/quotas')).body;
    expect(quota.limits).toMatchObject({ vcpu: 2, snapshotCount: 1, memoryMiB: 131072 });
    expect((await acme.post('/v1/vms', { machineType: 'c4m8' })).body.dimension).toBe('vcpu');
    expect((await acme.withKey(secondKey).get('/v1/vms')).status).toBe(200);

    await admin(dataDir, 'keys', 'revoke', secondKey.slice(0, 12));
    await sleep(API_KEY_CACHE_MS); // the server reuses a key's answer for up to this long
    expect((await acme.withKey(secondKey).get('/v1/vms')).status).toBe(401);
    expect((await acme.get('/v1/vms')).status).toBe(200);
    expect(await admin(dataDir, 'keys', 'list', '--org', 'acme')).toMatch(/revoked/);

    await admin(dataDir, 'quotas', 'set', '--org', 'acme', '--vcpu', 'default');
    expect((await acme.get('/v1/org/quotas')).body.limits.vcpu).toBe(64);

    // `quotas get` reports what the API reports (usage included), through the same service.
    const vm = (await acme.post('/v1/vms', { machineType: 'c2m4' })).body;
    const api = (await acme.get('/v1/org/quotas')).body;
    const got = await admin(dataDir, 'quotas', 'get', '--org', 'acme');
    expect(got).toMatch(new RegExp(`vcpu\\s+${api.usage.vcpu} / ${api.limits.vcpu} \\(default\\)`));
    expect(got).toMatch(
      new RegExp(`snapshot-count\\s+0 / ${api.limits.snapshotCount}(?! \\(default\\))`),
    );
    expect(api.usage.vcpu).toBe(2);
    await acme.del(`/v1/vms/${vm.id}`);
  });

  it('fails with usage errors', async () => {
    await expect(admin(dataDir, 'keys', 'create')).rejects.toMatchObject({ code: 2 });
    await expect(
      admin(dataDir, 'quotas', 'set', '--org', 'nope', '--vcpu', '1'),
    ).rejects.toMatchObject({ code: 2 });
    await expect(admin(dataDir, 'bogus')).rejects.toMatchObject({ code: 2 });
    await admin(dataDir, 'orgs', 'create', 'twice');
    await expect(admin(dataDir, 'orgs', 'create', 'twice')).rejects.toMatchObject({
      code: 2,
      output: expect.stringMatching(/"twice" exists/),
    });
    await expect(admin(dataDir, 'keys', 'list', '--org', 'nope')).rejects.toMatchObject({
      code: 2,
      output: expect.stringMatching(/no org "nope"/),
    });
    await expect(admin(dataDir, 'keys', 'revoke', 'fvm_nothing')).rejects.toMatchObject({
      code: 2,
      output: expect.stringMatching(/no active key/),
    });
    await expect(
      admin(dataDir, 'quotas', 'set', '--org', 'twice', '--vcpu', '-1'),
    ).rejects.toMatchObject({ code: 2 });
  });
});
