/**
 * Images without VMs: reference parsing, platform selection, the WWW-Authenticate parser, layer
 * unpacking (whiteouts, opaque directories, traversal, links, devices, owners), and pulls from a
 * real registry on 127.0.0.1 (Debian's docker-registry): basic auth right/wrong/missing, token
 * auth through an in-test token service, unknown image or tag, unreachable registry, manifest
 * lists, gzip/zstd/plain layers, the cache by digest. The ext4 made is read back with debugfs.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OciImageSource } from '../src/images/oci-image-source.js';
import { isInsecureRegistry, parseReference } from '../src/images/reference.js';
import { parseChallenge, pickPlatform } from '../src/images/registry.js';
import { applyLayer, type UnpackState } from '../src/images/unpack.js';
import { ImageError } from '../src/services/image-source.js';
import {
  haveRegistry,
  pushImage,
  pushIndex,
  startRegistry,
  startTokenFront,
  tarOf,
  type LayerEntry,
  type TestRegistry,
} from './registry-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'oci-images-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('image references', () => {
  it('parses Docker Hub defaults, hosts with ports, tags and digests', () => {
    expect(parseReference('debian')).toEqual({
      registry: 'docker.io',
      repository: 'library/debian',
      tag: 'latest',
    });
    expect(parseReference('alpine:3.20')).toMatchObject({
      repository: 'library/alpine',
      tag: '3.20',
    });
    expect(parseReference('org/app:v1')).toMatchObject({
      registry: 'docker.io',
      repository: 'org/app',
    });
    expect(parseReference('ghcr.io/org/app')).toMatchObject({
      registry: 'ghcr.io',
      repository: 'org/app',
      tag: 'latest',
    });
    expect(parseReference('127.0.0.1:5000/x/y:t')).toMatchObject({
      registry: '127.0.0.1:5000',
      repository: 'x/y',
      tag: 't',
    });
    expect(parseReference('localhost/app')).toMatchObject({
      registry: 'localhost',
      repository: 'app',
    });
    const d = `sha256:${'a'.repeat(64)}`;
    expect(parseReference(`host.io/app@${d}`)).toEqual({
      registry: 'host.io',
      repository: 'app',
      digest: d,
    });
    expect(parseReference(`app:1@${d}`)).toMatchObject({ tag: '1', digest: d });
    expect(parseReference('index.docker.io/library/busybox')).toMatchObject({
      registry: 'docker.io',
      repository: 'library/busybox',
    });
  });

  it('refuses malformed references with invalid', () => {
    for (const bad of [
      '',
      'UPPER/case',
      'a//b',
      'app@sha256:12',
      'app:bad tag',
      'x/../y',
      'a:b:c',
    ]) {
      expect(() => parseReference(bad)).toThrow(ImageError);
      try {
        parseReference(bad);
      } catch (err) {
        expect((err as ImageError).code).toBe('invalid');
      }
    }
  });

  it('speaks plain http only to loopback and listed registries', () => {
    expect(isInsecureRegistry('127.0.0.1:5000', {})).toBe(true);
    expect(isInsecureRegistry('localhost:1', {})).toBe(true);
    expect(isInsecureRegistry('docker.io', {})).toBe(false);
    expect(
      isInsecureRegistry('reg.lan:5000', { FASTVM_INSECURE_REGISTRIES: 'other, reg.lan:5000' }),
    ).toBe(true);
    expect(isInsecureRegistry('reg.lan:5001', { FASTVM_INSECURE_REGISTRIES: 'reg.lan:5000' })).toBe(
      false,
    );
  });

  it('picks the platform from an index and parses auth challenges', () => {
    const d = (arch: string, variant?: string) => ({
      mediaType: 'm',
      digest: arch,
      size: 1,
      platform: { os: 'linux', architecture: arch, ...(variant ? { variant } : {}) },
    });
    const entries = [
      {
        mediaType: 'm',
        digest: 'att',
        size: 1,
        platform: { os: 'unknown', architecture: 'unknown' },
      },
      d('arm64', 'v8'),
      d('amd64'),
      d('arm', 'v7'),
    ];
    expect(pickPlatform(entries, 'linux/amd64')?.digest).toBe('amd64');
    expect(pickPlatform(entries, 'linux/arm/v7')?.digest).toBe('arm');
    expect(pickPlatform(entries, 'linux/arm64')?.digest).toBe('arm64');
    expect(pickPlatform(entries, 'linux/s390x')).toBeUndefined();
    expect(
      parseChallenge(
        'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull"',
      ),
    ).toEqual({
      realm: 'https://auth.io/token',
      service: 'registry.io',
      scope: 'repository:a/b:pull',
    });
    expect(parseChallenge('Basic realm="x"')).toEqual({ realm: 'x' });
  });
});

describe('layer unpacking', () => {
  let n = 0;
  const layerFile = async (entries: LayerEntry[]) => {
    const f = path.join(tmp, `layer-${++n}.tar`);
    fs.writeFileSync(f, await tarOf(entries));
    return f;
  };
  const freshRoot = () => {
    const r = path.join(tmp, `root-${++n}`);
    fs.mkdirSync(r);
    return r;
  };
  const state = (): UnpackState => ({ bytes: 0, maxBytes: 1 << 30, skipped: 0 });

  it('stacks layers: whiteouts remove, opaque directories hide the lower layers only', async () => {
    const root = freshRoot();
    const st = state();
    await applyLayer(
      await layerFile([
        { type: 'dir', path: 'etc' },
        { type: 'file', path: 'etc/keep', data: 'k' },
        { type: 'file', path: 'etc/gone', data: 'g' },
        { type: 'dir', path: 'data' },
        { type: 'file', path: 'data/old1', data: '1' },
        { type: 'dir', path: 'data/sub' },
        { type: 'file', path: 'data/sub/old2', data: '2' },
        { type: 'dir', path: 'tree/deep' },
        { type: 'file', path: 'tree/deep/x', data: 'x' },
      ]),
      root,
      st,
    );
    await applyLayer(
      await layerFile([
        { type: 'whiteout', path: 'etc/gone' },
        { type: 'whiteout', path: 'tree' },
        { type: 'file', path: 'data/new-before', data: 'n' },
        { type: 'opaque', dir: 'data' },
        { type: 'file', path: 'data/new-after', data: 'm' },
        { type: 'whiteout', path: 'nothing/here' },
      ]),
      root,
      st,
    );
    expect(fs.readFileSync(path.join(root, 'etc/keep'), 'utf8')).toBe('k');
    expect(fs.existsSync(path.join(root, 'etc/gone'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'tree'))).toBe(false);
    expect(fs.readdirSync(path.join(root, 'data')).sort()).toEqual(['new-after', 'new-before']);
    expect(fs.existsSync(path.join(root, 'nothing'))).toBe(false);
    expect(fs.readdirSync(root).some((f) => f.includes('.wh.'))).toBe(false);
  });

  it('refuses entries that leave the root, and keeps symlinked paths inside it', async () => {
    const root = freshRoot();
    const outside = path.join(tmp, `outside-${n}`);
    fs.mkdirSync(outside);
    await expect(
      applyLayer(await layerFile([{ type: 'file', path: '../escape', data: 'x' }]), root, state()),
    ).rejects.toMatchObject({ code: 'invalid' });
    await expect(
      applyLayer(
        await layerFile([{ type: 'file', path: 'a/../../escape', data: 'x' }]),
        root,
        state(),
      ),
    ).rejects.toMatchObject({ code: 'invalid' });
    // A symlink to a host path, then entries through it: they land under the root's own path.
    await applyLayer(
      await layerFile([
        { type: 'symlink', path: 'abs', target: outside },
        { type: 'symlink', path: 'rel', target: '../../../../../../..' + outside },
        { type: 'symlink', path: 'file-link', target: `${outside}/victim` },
      ]),
      root,
      state(),
    );
    fs.writeFileSync(path.join(outside, 'victim'), 'untouched');
    await applyLayer(
      await layerFile([
        { type: 'file', path: 'abs/one', data: '1' },
        { type: 'file', path: 'rel/two', data: '2' },
        { type: 'file', path: 'file-link', data: 'replaced' },
        { type: 'whiteout', path: 'abs/victim' },
      ]),
      root,
      state(),
    );
    expect(fs.readdirSync(outside)).toEqual(['victim']);
    expect(fs.readFileSync(path.join(outside, 'victim'), 'utf8')).toBe('untouched');
    expect(fs.readFileSync(path.join(root, outside, 'one'), 'utf8')).toBe('1');
    expect(fs.readFileSync(path.join(root, outside, 'two'), 'utf8')).toBe('2');
    // The entry itself replaced the symlink instead of writing through it.
    expect(fs.lstatSync(path.join(root, 'file-link')).isFile()).toBe(true);
    // Within one layer: a directory used as a parent, then replaced by a symlink out of the
    // root, then used again: the second entry goes through the new symlink, inside the root.
    const outside2 = path.join(tmp, `outside2-${n}`);
    fs.mkdirSync(outside2);
    await applyLayer(
      await layerFile([
        { type: 'file', path: 'swap/first', data: '1' },
        { type: 'symlink', path: 'swap', target: outside2 },
        { type: 'file', path: 'swap/second', data: '2' },
      ]),
      root,
      state(),
    );
    expect(fs.readdirSync(outside2)).toEqual([]);
    expect(fs.readFileSync(path.join(root, outside2, 'second'), 'utf8')).toBe('2');
    // A hard link must name something inside the root.
    await expect(
      applyLayer(
        await layerFile([{ type: 'link', path: 'h', target: '../../etc/passwd' }]),
        root,
        state(),
      ),
    ).rejects.toMatchObject({ code: 'invalid' });
  });

  it('keeps modes, owners, symlinks and hard links; skips device nodes; caps the size', async () => {
    const root = freshRoot();
    const st = state();
    await applyLayer(
      await layerFile([
        { type: 'dir', path: 'usr/bin', mode: 0o755 },
        {
          type: 'file',
          path: 'usr/bin/tool',
          data: '#!/bin/sh\n',
          mode: 0o4755,
          uid: 1000,
          gid: 50,
        },
        { type: 'link', path: 'usr/bin/tool2', target: 'usr/bin/tool' },
        { type: 'symlink', path: 'usr/bin/t', target: 'tool' },
        { type: 'char', path: 'dev-null' },
        { type: 'dir', path: 'tmp', mode: 0o1777 },
      ]),
      root,
      st,
    );
    const s = fs.statSync(path.join(root, 'usr/bin/tool'));
    expect(s.mode & 0o7777).toBe(0o4755);
    expect([s.uid, s.gid]).toEqual([1000, 50]);
    expect(fs.statSync(path.join(root, 'usr/bin/tool2')).ino).toBe(s.ino);
    expect(fs.readlinkSync(path.join(root, 'usr/bin/t'))).toBe('tool');
    expect(fs.existsSync(path.join(root, 'dev-null'))).toBe(false);
    expect(st.skipped).toBe(1);
    expect(fs.statSync(path.join(root, 'tmp')).mode & 0o7777).toBe(0o1777);
    await expect(
      applyLayer(
        await layerFile([{ type: 'file', path: 'big', data: Buffer.alloc(4096) }]),
        freshRoot(),
        { bytes: 0, maxBytes: 1000, skipped: 0 },
      ),
    ).rejects.toMatchObject({ code: 'too_large' });
  });
});

/** A file's contents inside an ext4 image (debugfs), or undefined when it is not there. */
function ext4Cat(image: string, file: string): string | undefined {
  const r = spawnSync('debugfs', ['-R', `cat ${file}`, image], { encoding: 'utf8' });
  if (/File not found|not found by ext2_lookup/.test(r.stderr)) return undefined;
  return r.stdout;
}

function ext4Has(image: string, file: string): boolean {
  const r = execFileSync('debugfs', ['-R', `ls -l ${path.posix.dirname(file)}`, image], {
    stdio: ['ignore', 'pipe', 'pipe'],
  }).toString();
  return r.split('\n').some((l) => l.trim().split(/\s+/).pop() === path.posix.basename(file));
}

describe.skipIf(!haveRegistry())('pulls from a registry on 127.0.0.1', () => {
  const creds = { username: 'puller', password: 'S3cret-p4ss!word' };
  let open: TestRegistry;
  let locked: TestRegistry;
  let source: OciImageSource;
  const agent = path.join(tmp, 'fake-agent');
  const layers = async () => [
    {
      tar: await tarOf([
        { type: 'dir', path: 'etc' },
        { type: 'file', path: 'etc/base.txt', data: 'base\n' },
        { type: 'file', path: 'etc/remove-me', data: 'x' },
      ]),
      compression: 'gzip' as const,
    },
    {
      tar: await tarOf([
        { type: 'whiteout', path: 'etc/remove-me' },
        { type: 'file', path: 'etc/top.txt', data: 'top\n' },
      ]),
      compression: 'zstd' as const,
    },
    {
      tar: await tarOf([{ type: 'file', path: 'plain.txt', data: 'plain\n' }]),
      compression: 'none' as const,
    },
  ];

  beforeAll(async () => {
    fs.writeFileSync(agent, '#!agent\n', { mode: 0o755 });
    open = await startRegistry();
    locked = await startRegistry({ auth: creds });
    source = new OciImageSource({ dataDir: path.join(tmp, 'data'), agent });
  }, 60_000);
  afterAll(async () => {
    await open?.stop();
    await locked?.stop();
  });

  it('pulls an image (gzip, zstd, plain layers; whiteout; config) into an ext4 with the agent, then from the cache', async () => {
    const pushed = await pushImage(open, 'test/app', 'v1', {
      layers: await layers(),
      config: {
        Env: ['PATH=/usr/bin:/bin', 'GREETING=hello=world'],
        Cmd: ['/bin/sh', '-c', 'echo hi'],
        Entrypoint: ['/entry'],
        WorkingDir: '/srv',
        User: '1000',
        ExposedPorts: { '8080/tcp': {} },
        Labels: { a: 'b' },
      },
    });
    const progress: string[] = [];
    const r = await source.resolve(`${open.host}/test/app:v1`, {
      onProgress: (m) => progress.push(m),
    });
    expect(r.digest).toBe(pushed.digest);
    expect(r.baseImage.id).toBe(`oci-${pushed.digest.slice(7, 23)}`);
    expect(r.pulledBytes).toBe(pushed.bytes);
    expect(r.config).toEqual({
      env: { PATH: '/usr/bin:/bin', GREETING: 'hello=world' },
      cmd: ['/bin/sh', '-c', 'echo hi'],
      entrypoint: ['/entry'],
      workingDir: '/srv',
      user: '1000',
      exposedPorts: [8080],
      labels: { a: 'b' },
    });
    expect(progress.some((m) => m.includes('layer 3/3'))).toBe(true);
    const img = r.baseImage.rootfsPath;
    expect(fs.statSync(img).size).toBeGreaterThanOrEqual(10 * 2 ** 30); // sparse, spans 10 GiB
    expect(ext4Cat(img, '/etc/base.txt')).toBe('base\n');
    expect(ext4Cat(img, '/etc/top.txt')).toBe('top\n');
    expect(ext4Cat(img, '/plain.txt')).toBe('plain\n');
    expect(ext4Has(img, '/etc/remove-me')).toBe(false);
    expect(ext4Has(img, '/etc/top.txt')).toBe(true);
    expect(ext4Cat(img, '/usr/local/sbin/fastvm-agent')).toBe('#!agent\n');
    expect(ext4Cat(img, '/etc/resolv.conf')).toContain('nameserver 10.0.2.2');
    expect(ext4Has(img, '/usr/local/lib/fastvm/bin/ip')).toBe(true);
    // Cached: same base, nothing pulled; by digest too.
    const again = await source.resolve(`${open.host}/test/app:v1`);
    expect(again).toMatchObject({ baseImage: r.baseImage, pulledBytes: 0, digest: r.digest });
    const byDigest = await source.resolve(`${open.host}/test/app@${pushed.digest}`);
    expect(byDigest.baseImage).toEqual(r.baseImage);
    expect(fs.readdirSync(source.dir).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  }, 120_000);

  it('shares one build between concurrent resolves of one image', async () => {
    await pushImage(open, 'test/conc', 'x', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 'c', data: 'c' }]) }],
    });
    const built: string[] = [];
    const own = new OciImageSource({
      dataDir: path.join(tmp, 'conc'),
      agent,
      log: (m) => built.push(m),
    });
    const [a, b, c] = await Promise.all([
      own.resolve(`${open.host}/test/conc:x`),
      own.resolve(`${open.host}/test/conc:x`),
      own.resolve(`${open.host}/test/conc:x`),
    ]);
    expect(a.baseImage).toEqual(b.baseImage);
    expect(c.baseImage).toEqual(b.baseImage);
    expect(built).toHaveLength(1);
    expect(fs.readdirSync(own.dir)).toEqual([a.baseImage.id]);
  }, 120_000);

  it('follows a manifest list to linux/amd64 (or the platform asked for)', async () => {
    const amd = await pushImage(open, 'test/multi', 'amd', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 'arch', data: 'amd64\n' }]) }],
    });
    const arm = await pushImage(open, 'test/multi', 'arm', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 'arch', data: 'arm64\n' }]) }],
    });
    await pushIndex(open, 'test/multi', 'latest', [
      {
        digest: arm.digest,
        size: arm.manifest.length,
        platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      },
      {
        digest: amd.digest,
        size: amd.manifest.length,
        platform: { os: 'linux', architecture: 'amd64' },
      },
    ]);
    const r = await source.resolve(`${open.host}/test/multi`);
    expect(r.digest).toBe(amd.digest);
    expect(ext4Cat(r.baseImage.rootfsPath, '/arch')).toBe('amd64\n');
    const a = await source.resolve(`${open.host}/test/multi`, { platform: 'linux/arm64' });
    expect(a.digest).toBe(arm.digest);
    await expect(
      source.resolve(`${open.host}/test/multi`, { platform: 'linux/s390x' }),
    ).rejects.toMatchObject({
      code: 'not_found',
      message: expect.stringContaining('linux/amd64'),
    });
  }, 120_000);

  it('reads Docker v2 manifests too', async () => {
    const pushed = await pushImage(open, 'test/docker', 'v2', {
      docker: true,
      layers: [{ tar: await tarOf([{ type: 'file', path: 'd', data: 'docker\n' }]) }],
    });
    const r = await source.resolve(`${open.host}/test/docker:v2`);
    expect(r.digest).toBe(pushed.digest);
    expect(ext4Cat(r.baseImage.rootfsPath, '/d')).toBe('docker\n');
  }, 120_000);

  it('answers not_found for an unknown repository or tag, unreachable for a closed port', async () => {
    await expect(source.resolve(`${open.host}/test/nope:v1`)).rejects.toMatchObject({
      code: 'not_found',
    });
    await expect(source.resolve(`${open.host}/test/app:nope`)).rejects.toMatchObject({
      code: 'not_found',
      message: expect.stringContaining('tag nope'),
    });
    await expect(
      source.resolve(`${open.host}/test/app@sha256:${'0'.repeat(64)}`),
    ).rejects.toMatchObject({
      code: 'not_found',
    });
    const closed = await (await import('./registry-helpers.js')).freePort();
    await expect(source.resolve(`127.0.0.1:${closed}/test/app:v1`)).rejects.toMatchObject({
      code: 'unreachable',
      message: expect.stringContaining(`127.0.0.1:${closed}`),
    });
    await expect(source.resolve('fastvm/base')).rejects.toMatchObject({ code: 'invalid' });
    await expect(source.resolve('debian:bookworm')).rejects.toMatchObject({ code: 'invalid' });
  }, 60_000);

  it('basic auth: right password pulls; wrong or no password is unauthorized, never echoing it', async () => {
    await pushImage(locked, 'private/app', 'v1', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 'secret.txt', data: 'private\n' }]) }],
    });
    const ref = `${locked.host}/private/app:v1`;
    const r = await source.resolve(ref, creds);
    expect(ext4Cat(r.baseImage.rootfsPath, '/secret.txt')).toBe('private\n');
    const wrong = 'Wr0ng-Pa55word-xyz';
    const err = await source
      .resolve(ref, { username: creds.username, password: wrong })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err).toMatchObject({ code: 'unauthorized' });
    expect((err as Error).message).not.toContain(wrong);
    expect((err as Error).message).toContain(locked.host);
    expect(JSON.stringify(err)).not.toContain(wrong);
    expect(String((err as Error).stack)).not.toContain(wrong);
    await expect(source.resolve(ref)).rejects.toMatchObject({
      code: 'unauthorized',
      message: expect.stringContaining('registryUsername'),
    });
  }, 120_000);

  it('token auth: a Bearer challenge sends the credentials to the token service, not to the registry', async () => {
    await pushImage(open, 'tok/app', 'v1', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 't.txt', data: 'token\n' }]) }],
    });
    const front = await startTokenFront(open, creds);
    try {
      const ref = `${front.host}/tok/app:v1`;
      const r = await source.resolve(ref, creds);
      expect(ext4Cat(r.baseImage.rootfsPath, '/t.txt')).toBe('token\n');
      expect(front.tokenRequests.length).toBeGreaterThan(0);
      expect(front.tokenRequests[0]).toContain('scope=repository%3Atok%2Fapp%3Apull');
      const wrong = 'n0t-the-pa55';
      const err = await source
        .resolve(ref, { username: creds.username, password: wrong })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'unauthorized' });
      expect((err as Error).message).not.toContain(wrong);
      await expect(source.resolve(ref)).rejects.toMatchObject({ code: 'unauthorized' });
    } finally {
      await front.stop();
    }
    // Tokens that expire during the pull (after two requests here) are renewed.
    const short = await startTokenFront(open, creds, 2);
    try {
      const own = new OciImageSource({ dataDir: path.join(tmp, 'short'), agent });
      const r = await own.resolve(`${short.host}/tok/app:v1`, creds);
      expect(ext4Cat(r.baseImage.rootfsPath, '/t.txt')).toBe('token\n');
      expect(short.tokenRequests.length).toBeGreaterThanOrEqual(2);
    } finally {
      await short.stop();
    }
    // Anonymous tokens (a public repository on a token registry).
    const anon = await startTokenFront(open, undefined);
    try {
      const r = await source.resolve(`${anon.host}/tok/app:v1`);
      expect(r.baseImage.id).toMatch(/^oci-[0-9a-f]{16}$/);
    } finally {
      await anon.stop();
    }
  }, 120_000);

  it('a cancelled pull stops and leaves nothing; the temp directory of a crashed build goes at start', async () => {
    await pushImage(open, 'test/cancel', 'v1', {
      layers: [
        { tar: await tarOf([{ type: 'file', path: 'a', data: 'a' }]) },
        { tar: await tarOf([{ type: 'file', path: 'b', data: 'b' }]) },
      ],
    });
    const dataDir = path.join(tmp, 'cancel');
    const stale = path.join(dataDir, 'images', '.tmp-oci-0123456789abcdef-999999999-abcd1234');
    fs.mkdirSync(path.join(stale, 'root'), { recursive: true });
    const own = new OciImageSource({ dataDir, agent });
    const ac = new AbortController();
    const err = await own
      .resolve(`${open.host}/test/cancel:v1`, {
        signal: ac.signal,
        onProgress: (m) => {
          if (m.includes('layer 1/2')) ac.abort(new Error('stop it'));
        },
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('stop it');
    expect(fs.readdirSync(own.dir)).toEqual([]);
    // The same image resolves afterwards (nothing half-made was kept).
    const r = await own.resolve(`${open.host}/test/cancel:v1`);
    expect(ext4Cat(r.baseImage.rootfsPath, '/b')).toBe('b');
  }, 60_000);

  it('refuses a layer larger than the limit with too_large', async () => {
    await pushImage(open, 'test/big', 'v1', {
      layers: [
        {
          tar: await tarOf([{ type: 'file', path: 'big', data: Buffer.alloc(2 << 20, 7) }]),
          compression: 'none',
        },
      ],
    });
    const small = new OciImageSource({
      dataDir: path.join(tmp, 'small'),
      agent,
      maxBytes: 1 << 20,
    });
    await expect(small.resolve(`${open.host}/test/big:v1`)).rejects.toMatchObject({
      code: 'too_large',
    });
  }, 60_000);
});
