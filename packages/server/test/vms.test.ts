import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntimeError } from '../src/testing/index.js';
import { TRANSPORTS, TestClient, sleep, startTestServer, type TestServer } from './helpers.js';

const RFC3339_Z = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe.each(TRANSPORTS)('VMs over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('launches a VM: 201, running, every contract field', async () => {
    const res = await api.post('/v1/vms', {
      machineType: 'c2m4',
      name: 'web',
      metadata: { env: 'test' },
    });
    expect(res.status).toBe(201);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    const vm = res.body;
    expect(vm).toMatchObject({
      name: 'web',
      status: 'running',
      cpu: 2,
      memoryMiB: 4096,
      diskGiB: 10,
      machineName: 'c2m4',
      sourceName: '',
      publicIpv6: null,
      deletedAt: null,
      metadata: { env: 'test' },
      firewall: { mode: 'restricted', ingress: [] },
    });
    expect(vm.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(vm.orgId).toEqual(expect.any(String));
    expect(vm.createdAt).toMatch(RFC3339_Z);
    expect(t.runtime.get(vm.id)?.state).toBe('running');
    expect(res.headers['x-request-id']).toBeTruthy();
  });

  it('an exec cut short by a delete of its VM is a clean 404, with no host path in sight', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const running = api.post(`/v1/vms/${vm.id}/exec`, { command: 'sleep 30' });
    await sleep(50);
    expect((await api.del(`/v1/vms/${vm.id}`)).status).toBe(200);
    const res = await running;
    expect(res.status).toBe(404);
    expect(res.body).toMatchObject({ code: 'not_found', error: expect.stringMatching(/deleted/) });
    expect(res.headers['x-should-retry']).toBe('false');
  });

  it('normalises names and defaults them to vm-<id8>', async () => {
    const spaced = await api.post('/v1/vms', { machineType: 'c1m2', name: '  a \t b\n  c  ' });
    expect(spaced.body.name).toBe('a b c');
    const long = await api.post('/v1/vms', { machineType: 'c1m2', name: 'é'.repeat(70) });
    expect(long.body.name).toBe('é'.repeat(64));
    const blank = await api.post('/v1/vms', { machineType: 'c1m2', name: '   ' });
    expect(blank.body.name).toBe(`vm-${blank.body.id.slice(0, 8)}`);
    const none = await api.post('/v1/vms', { machineType: 'c1m2' });
    expect(none.body.name).toBe(`vm-${none.body.id.slice(0, 8)}`);
    for (const r of [spaced, long, blank, none]) await api.del(`/v1/vms/${r.body.id}`);
  });

  it('validates launch requests with 400 and the offending field', async () => {
    const cases: Array<[unknown, string]> = [
      [{}, 'machineType'],
      [{ machineType: 'c3m9' }, 'machineType'],
      [{ machineType: 'c1m2', diskGiB: 5 }, 'diskGiB'],
      [{ machineType: 'c1m2', diskGiB: 100000 }, 'diskGiB'],
      [{ machineType: 'c1m2', diskGiB: -1 }, 'diskGiB'],
      [{ machineType: 'c1m2', diskGiB: 'ten' }, 'diskGiB'],
      [{ machineType: 'c1m2', name: 42 }, 'name'],
      [{ machineType: 'c1m2', firewall: { mode: 'closed' } }, 'firewall.mode'],
      [
        {
          machineType: 'c1m2',
          firewall: { mode: 'restricted', ingress: [{ protocol: 'icmp', portStart: 1 }] },
        },
        'firewall.ingress[0].protocol',
      ],
      [
        {
          machineType: 'c1m2',
          firewall: { mode: 'restricted', ingress: [{ protocol: 'tcp', portStart: 0 }] },
        },
        'firewall.ingress[0].portStart',
      ],
      [
        {
          machineType: 'c1m2',
          firewall: {
            mode: 'restricted',
            ingress: [{ protocol: 'tcp', portStart: 80, portEnd: 79 }],
          },
        },
        'firewall.ingress[0].portEnd',
      ],
      [
        {
          machineType: 'c1m2',
          firewall: {
            mode: 'restricted',
            ingress: [{ protocol: 'tcp', portStart: 22, sourceCidrs: ['10.0.0.0/8'] }],
          },
        },
        'firewall.ingress[0].sourceCidrs[0]',
      ],
      // v2 (contract §3.8) is accepted; its fields are validated like v1's.
      [
        { machineType: 'c1m2', firewall: { ingress: { default: 'maybe' } } },
        'firewall.ingress.default',
      ],
      [{ machineType: 'c1m2', metadata: { k: 1 } }, 'metadata.k'],
      [{ machineType: 'c1m2', metadata: { '': 'v' } }, 'metadata'],
    ];
    for (const [body, field] of cases) {
      const res = await api.post('/v1/vms', body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.code).toBe('bad_request');
      expect(res.body.field, JSON.stringify(body)).toBe(field);
      expect(typeof res.body.error).toBe('string');
    }
    const ipv4 = await api.post('/v1/vms', {
      machineType: 'c1m2',
      firewall: {
        mode: 'restricted',
        ingress: [{ protocol: 'tcp', portStart: 22, sourceCidrs: ['192.168.1.0/24'] }],
      },
    });
    expect(ipv4.body.error).toMatch(/IPv4/);
  });

  it('enforces metadata limits', async () => {
    const tooMany = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`k${i}`, 'v']));
    const longKey = { ['k'.repeat(257)]: 'v' };
    const longValue = { k: 'v'.repeat(4097) };
    const bigJson = Object.fromEntries(
      Array.from({ length: 20 }, (_, i) => [`k${i}`, 'v'.repeat(4000)]),
    );
    for (const metadata of [tooMany, longKey, longValue, bigJson]) {
      const res = await api.post('/v1/vms', { machineType: 'c1m2', metadata });
      expect(res.status).toBe(400);
      expect(res.body.field).toMatch(/^metadata/);
    }
    const atLimits = Object.fromEntries(
      Array.from({ length: 15 }, (_, i) => [`k${i}`.padEnd(256, 'x'), 'v'.repeat(4096)]),
    );
    const ok = await api.post('/v1/vms', { machineType: 'c1m2', metadata: atLimits });
    expect(ok.status).toBe(201);
    await api.del(`/v1/vms/${ok.body.id}`);
  });

  it('treats diskGiB 0 as the default and accepts larger disks', async () => {
    const zero = await api.post('/v1/vms', { machineType: 'c1m2', diskGiB: 0 });
    expect(zero.body.diskGiB).toBe(10);
    const big = await api.post('/v1/vms', { machineType: 'c1m2', diskGiB: 20 });
    expect(big.body.diskGiB).toBe(20);
    await api.del(`/v1/vms/${zero.body.id}`);
    await api.del(`/v1/vms/${big.body.id}`);
  });

  it('answers 501 for launch features that come later; 400 for malformed volumes', async () => {
    for (const extra of [{ bucketMounts: [{}] }]) {
      const res = await api.post('/v1/vms', { machineType: 'c1m2', ...extra });
      expect(res.status).toBe(501);
      expect(res.body.code).toBe('not_implemented');
      expect(res.headers['x-should-retry']).toBe('false');
    }
    const badVolume = await api.post('/v1/vms', { machineType: 'c1m2', volumes: [{}] });
    expect(badVolume.status).toBe(400);
    expect(badVolume.body.field).toMatch(/^volumes/);
    const nullTtl = await api.post('/v1/vms', { machineType: 'c1m2', ttl: null, firewall: null });
    expect(nullTtl.status).toBe(201);
    expect(nullTtl.body.firewall).toEqual({ mode: 'restricted', ingress: [] });
    await api.del(`/v1/vms/${nullTtl.body.id}`);
  });

  it('gets a VM by id or unique name; unknown, malformed and ambiguous refs fail', async () => {
    const a = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'lookup me' })).body;
    expect((await api.get(`/v1/vms/${a.id}`)).body.id).toBe(a.id);
    expect((await api.get('/v1/vms/lookup%20me')).body.id).toBe(a.id);
    for (const ref of [
      'vm_does_not_exist_000000',
      '00000000-0000-0000-0000-000000000000',
      '%E2%9C%93',
    ]) {
      const res = await api.get(`/v1/vms/${ref}`);
      expect(res.status).toBe(404);
      expect(res.body).toMatchObject({ code: 'not_found', error: expect.any(String) });
    }
    const b = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'lookup me' })).body;
    const amb = await api.get('/v1/vms/lookup%20me');
    expect(amb.status).toBe(409);
    expect(amb.body.code).toBe('ambiguous_name');
    expect(amb.headers['x-should-retry']).toBe('false');
    await api.del(`/v1/vms/${a.id}`);
    await api.del(`/v1/vms/${b.id}`);
  });

  it('lists VMs with status and metadata filters (both spellings)', async () => {
    const mk = async (metadata: Record<string, string>) =>
      (await api.post('/v1/vms', { machineType: 'c1m2', metadata })).body;
    const prod = await mk({ env: 'prod', team: 'a' });
    const dev = await mk({ env: 'dev', team: 'a' });
    const all = await api.get('/v1/vms');
    expect(Array.isArray(all.body)).toBe(true);
    const ids = all.body.map((v: { id: string }) => v.id);
    expect(ids).toEqual(expect.arrayContaining([prod.id, dev.id]));
    const byDot = await api.get('/v1/vms?metadata.env=prod');
    expect(byDot.body.map((v: { id: string }) => v.id)).toEqual([prod.id]);
    const byBracket = await api.get('/v1/vms?metadata%5Benv%5D=dev&metadata[team]=a');
    expect(byBracket.body.map((v: { id: string }) => v.id)).toEqual([dev.id]);
    const both = await api.get('/v1/vms?metadata.team=a');
    expect(both.body).toHaveLength(2);
    expect((await api.get('/v1/vms?status=running&metadata.team=a')).body).toHaveLength(2);
    expect((await api.get('/v1/vms?status=stopped&metadata.team=a')).body).toHaveLength(0);
    expect((await api.get('/v1/vms?status=bogus')).body).toEqual([]);
    expect((await api.get('/v1/vms?status=stopped,running&metadata.team=a')).body).toHaveLength(2);
    await api.del(`/v1/vms/${prod.id}`);
    await api.del(`/v1/vms/${dev.id}`);
  });

  it('updates name and metadata; rejects empty and TTL updates', async () => {
    const vm = (
      await api.post('/v1/vms', { machineType: 'c1m2', name: 'old', metadata: { a: '1' } })
    ).body;
    const renamed = await api.patch(`/v1/vms/${vm.id}`, { name: '  new   name ' });
    expect(renamed.status).toBe(200);
    expect(renamed.body).toMatchObject({ name: 'new name', metadata: { a: '1' } });
    const meta = await api.patch(`/v1/vms/${vm.id}`, { metadata: { b: '2' } });
    expect(meta.body).toMatchObject({ name: 'new name', metadata: { b: '2' } });
    const cleared = await api.patch('/v1/vms/new%20name', { metadata: {} });
    expect(cleared.body.metadata).toEqual({});
    expect((await api.patch(`/v1/vms/${vm.id}`, {})).status).toBe(400);
    expect(
      (await api.patch(`/v1/vms/${vm.id}`, { ttl: { seconds: 5, action: 'pause' } })).status,
    ).toBe(200);
    expect((await api.patch(`/v1/vms/${vm.id}`, { name: 5 })).body.field).toBe('name');
    expect((await api.patch('/v1/vms/nope', { name: 'x' })).status).toBe(404);
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('deletes a VM: {id, deleted}, gone afterwards, runtime destroyed', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const res = await api.del(`/v1/vms/${vm.id}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ id: vm.id, deleted: true });
    expect(t.runtime.get(vm.id)).toBeUndefined();
    expect((await api.get(`/v1/vms/${vm.id}`)).status).toBe(404);
    expect((await api.del(`/v1/vms/${vm.id}`)).status).toBe(404);
    const listed = (await api.get('/v1/vms')).body.map((v: { id: string }) => v.id);
    expect(listed).not.toContain(vm.id);
  });

  describe('exec', () => {
    let vmId: string;
    beforeAll(async () => {
      vmId = (await api.post('/v1/vms', { machineType: 'c1m2' })).body.id;
    });
    afterAll(async () => {
      await api.del(`/v1/vms/${vmId}`);
    });

    it('runs argv and returns exactly the ExecResult fields', async () => {
      const res = await api.post(`/v1/vms/${vmId}/exec`, { command: ['echo', 'hello'] });
      expect(res.status).toBe(200);
      expect(Object.keys(res.body).sort()).toEqual(
        [
          'durationMs',
          'exitCode',
          'stderr',
          'stderrTruncated',
          'stdout',
          'stdoutTruncated',
          'timedOut',
        ].sort(),
      );
      expect(res.body).toMatchObject({
        exitCode: 0,
        stdout: 'hello\n',
        stderr: '',
        timedOut: false,
        stdoutTruncated: false,
        stderrTruncated: false,
      });
      expect(Number.isInteger(res.body.durationMs)).toBe(true);
    });

    it('wraps a string command in sh -c and reports exit codes and stderr', async () => {
      const res = await api.post(`/v1/vms/${vmId}/exec`, {
        command: 'echo out; echo err >&2; exit 7',
      });
      expect(res.body).toMatchObject({ exitCode: 7, stdout: 'out\n', stderr: 'err\n' });
      const exit = await api.post(`/v1/vms/${vmId}/exec`, { command: ['sh', '-c', 'exit 3'] });
      expect(exit.body.exitCode).toBe(3);
    });

    it('feeds base64 stdin and round-trips UTF-8', async () => {
      const text = 'héllo wörld\n'.repeat(100);
      const res = await api.post(`/v1/vms/${vmId}/exec`, {
        command: ['cat'],
        stdin: Buffer.from(text).toString('base64'),
      });
      expect(res.body.stdout).toBe(text);
    });

    it('caps each stream at 4 MiB with truncation flags', async () => {
      const res = await api.post(`/v1/vms/${vmId}/exec`, { command: 'head -c 5000000 /dev/zero' });
      expect(res.body.stdoutTruncated).toBe(true);
      expect(res.body.stdout.length).toBe(4 * 1024 * 1024);
    });

    it('times out with timedOut true', async () => {
      const res = await api.post(`/v1/vms/${vmId}/exec`, {
        command: ['sleep', '5'],
        timeoutSec: 1,
      });
      expect(res.body.timedOut).toBe(true);
      expect(res.body.durationMs).toBeGreaterThanOrEqual(900);
      expect(res.body.durationMs).toBeLessThan(3000);
    });

    it('validates exec requests', async () => {
      for (const [body, field] of [
        [{}, 'command'],
        [{ command: [] }, 'command'],
        [{ command: [''] }, 'command'],
        [{ command: ['true'], timeoutSec: 0 }, 'timeoutSec'],
        [{ command: ['true'], timeoutSec: 1.5 }, 'timeoutSec'],
        [{ command: ['true'], stdin: '***' }, 'stdin'],
      ] as const) {
        const res = await api.post(`/v1/vms/${vmId}/exec`, body);
        expect(res.status, JSON.stringify(body)).toBe(400);
        expect(res.body.field).toBe(field);
      }
      const bad = await api.post(`/v1/vms/${vmId}/exec`, undefined, { rawBody: '{"command":' });
      expect(bad.status).toBe(400);
      expect(bad.body.code).toBe('bad_request');
    });

    it('streams NDJSON events with a final exit event', async () => {
      const res = await api.post(
        `/v1/vms/${vmId}/exec`,
        { command: 'echo one; echo two >&2; exit 4' },
        { headers: { accept: 'application/x-ndjson' } },
      );
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/x-ndjson/);
      const events = res.text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      const last = events.pop();
      expect(last).toMatchObject({ t: 'x', c: 4 });
      expect(last.to).toBeUndefined();
      expect(typeof last.ms).toBe('number');
      const out = events
        .filter((e) => e.t === 'o')
        .map((e) => Buffer.from(e.d, 'base64').toString())
        .join('');
      const err = events
        .filter((e) => e.t === 'e')
        .map((e) => Buffer.from(e.d, 'base64').toString())
        .join('');
      expect(out).toBe('one\n');
      expect(err).toBe('two\n');

      const ok = await api.post(
        `/v1/vms/${vmId}/exec`,
        { command: ['true'] },
        { headers: { accept: 'application/x-ndjson' } },
      );
      const exit = JSON.parse(ok.text.trim().split('\n').pop() as string);
      expect(exit.c).toBeUndefined();
      expect(exit.t).toBe('x');

      const slow = await api.post(
        `/v1/vms/${vmId}/exec`,
        { command: ['sleep', '3'], timeoutSec: 1 },
        { headers: { accept: 'application/x-ndjson' } },
      );
      expect(JSON.parse(slow.text.trim())).toMatchObject({ t: 'x', to: true });
    });

    it('conflicts (409, no retry) on a VM that is not running', async () => {
      const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
      t.runtime.crash(vm.id);
      await sleep(20);
      expect((await api.get(`/v1/vms/${vm.id}`)).body).toMatchObject({
        status: 'stopped',
        statusMessage: expect.stringContaining('exited'),
      });
      const res = await api.post(`/v1/vms/${vm.id}/exec`, { command: ['true'] });
      expect(res.status).toBe(409);
      expect(res.body.code).toBe('conflict');
      expect(res.headers['x-should-retry']).toBe('false');
      await api.del(`/v1/vms/${vm.id}`);
    });

    it('maps runtime failures to 502 vm_unavailable without retry', async () => {
      t.runtime.failExec = new FakeRuntimeError('agent_unavailable', 'agent did not answer');
      try {
        const res = await api.post(`/v1/vms/${vmId}/exec`, { command: ['true'] });
        expect(res.status).toBe(502);
        expect(res.body.code).toBe('vm_unavailable');
        expect(res.headers['x-should-retry']).toBe('false');
      } finally {
        t.runtime.failExec = undefined;
      }
    });
  });

  it('replaces and patches the firewall', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const put = await api.put(`/v1/vms/${vm.id}/firewall`, {
      mode: 'restricted',
      ingress: [
        { protocol: 'tcp', portStart: 22 },
        {
          protocol: 'udp',
          portStart: 8000,
          portEnd: 8100,
          sourceCidrs: ['2001:db8::/32'],
          description: 'game',
        },
      ],
    });
    expect(put.status).toBe(200);
    expect(put.body.firewall).toEqual({
      mode: 'restricted',
      ingress: [
        { protocol: 'tcp', portStart: 22 },
        {
          protocol: 'udp',
          portStart: 8000,
          portEnd: 8100,
          sourceCidrs: ['2001:db8::/32'],
          description: 'game',
        },
      ],
    });
    const mode = await api.patch(`/v1/vms/${vm.id}/firewall`, { mode: 'open' });
    expect(mode.body.firewall.mode).toBe('open');
    expect(mode.body.firewall.ingress).toHaveLength(2);
    const cleared = await api.patch(`/v1/vms/${vm.id}/firewall`, { ingress: [] });
    expect(cleared.body.firewall).toEqual({ mode: 'open', ingress: [] });
    const noop = await api.patch(`/v1/vms/${vm.id}/firewall`, {});
    expect(noop.body.firewall).toEqual({ mode: 'open', ingress: [] });
    expect((await api.get(`/v1/vms/${vm.id}`)).body.firewall).toEqual({
      mode: 'open',
      ingress: [],
    });
    const v4 = await api.put(`/v1/vms/${vm.id}/firewall`, {
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 22, sourceCidrs: ['0.0.0.0/0'] }],
    });
    expect(v4.status).toBe(400);
    expect(v4.body.field).toBe('ingress[0].sourceCidrs[0]');
    expect((await api.put(`/v1/vms/${vm.id}/firewall`, {})).body.field).toBe('mode');
    expect(
      (
        await api.put(`/v1/vms/${vm.id}/firewall`, {
          mode: 'open',
          ingress: [{ protocol: 'tcp', portStart: 70000 }],
        })
      ).status,
    ).toBe(400);
    expect(
      (
        await api.put(`/v1/vms/${vm.id}/firewall`, {
          mode: 'open',
          ingress: [{ protocol: 'tcp', portStart: 1, sourceCidrs: ['::1/129'] }],
        })
      ).status,
    ).toBe(400);
    expect((await api.put('/v1/vms/nope/firewall', { mode: 'open' })).status).toBe(404);
    await api.del(`/v1/vms/${vm.id}`);
  });
});

describe('slow and failing launches', () => {
  let t: TestServer;
  let api: TestClient;
  beforeAll(async () => {
    t = await startTestServer({ launchWaitMs: 100 });
    api = new TestClient(t.url, t.key);
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('answers 202 provisioning when the runtime is slow, then becomes running', async () => {
    t.runtime.launchDelayMs = 400;
    try {
      const res = await api.post('/v1/vms', { machineType: 'c1m2' });
      expect(res.status).toBe(202);
      expect(res.body.status).toBe('provisioning');
      const quotas = (await api.get('/v1/org/quotas')).body;
      expect(quotas.usage.vcpu).toBe(1);
      let status = 'provisioning';
      for (let i = 0; i < 50 && status === 'provisioning'; i++) {
        await sleep(50);
        status = (await api.get(`/v1/vms/${res.body.id}`)).body.status;
      }
      expect(status).toBe('running');
      await api.del(`/v1/vms/${res.body.id}`);
    } finally {
      t.runtime.launchDelayMs = 0;
    }
  });

  it('deleting a VM that is still provisioning waits for the launch, then destroys it', async () => {
    t.runtime.launchDelayMs = 300;
    try {
      const res = await api.post('/v1/vms', { machineType: 'c1m2' });
      expect(res.status).toBe(202);
      const del = await api.del(`/v1/vms/${res.body.id}`);
      expect(del.body).toEqual({ id: res.body.id, deleted: true });
      expect(t.runtime.get(res.body.id)).toBeUndefined();
      expect((await api.get('/v1/org/quotas')).body.usage.vcpu).toBe(0);
    } finally {
      t.runtime.launchDelayMs = 0;
    }
  });

  it('a failed launch answers 502 with the VM id, leaves it in error, releases quota', async () => {
    t.runtime.failLaunch = new FakeRuntimeError('qemu_failed', 'qemu exited with status 1');
    try {
      const res = await api.post('/v1/vms', { machineType: 'c4m8' });
      expect(res.status).toBe(502);
      expect(res.body).toMatchObject({ code: 'vm_unavailable', vmId: expect.any(String) });
      expect(res.headers['x-should-retry']).toBe('false');
      const vm = (await api.get(`/v1/vms/${res.body.vmId}`)).body;
      expect(vm).toMatchObject({ status: 'error', statusMessage: expect.stringContaining('qemu') });
      expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
        vcpu: 0,
        memoryMiB: 0,
        diskGiB: 0,
      });
      await api.del(`/v1/vms/${vm.id}`);
    } finally {
      t.runtime.failLaunch = undefined;
    }
  });

  it('a launch that fails in the background ends in error', async () => {
    t.runtime.launchDelayMs = 250;
    t.runtime.failLaunch = new FakeRuntimeError('qemu_failed', 'boom');
    try {
      const res = await api.post('/v1/vms', { machineType: 'c1m2' });
      expect(res.status).toBe(202);
      await sleep(400);
      expect((await api.get(`/v1/vms/${res.body.id}`)).body.status).toBe('error');
      expect((await api.get('/v1/org/quotas')).body.usage.vcpu).toBe(0);
      await api.del(`/v1/vms/${res.body.id}`);
    } finally {
      t.runtime.launchDelayMs = 0;
      t.runtime.failLaunch = undefined;
    }
  });
});
