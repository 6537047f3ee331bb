/**
 * Test helpers for images: a real registry (Debian's `docker-registry`, distribution 2.8) on
 * 127.0.0.1 with its own storage and config, optionally behind htpasswd basic auth, or behind a
 * small in-test token service (`startTokenFront`: a Bearer challenge and token endpoint in front of
 * the real registry); and a small OCI image writer that builds layers (tar, tar+gzip, tar+zstd)
 * from files the test describes and pushes blobs and manifests with the registry API.
 * No internet anywhere.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import tar from 'tar-stream';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export function haveRegistry(): boolean {
  return fs.existsSync(REGISTRY_BIN);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export interface TestRegistry {
  /** `127.0.0.1:<port>` (what image references start with). */
  readonly host: string;
  readonly url: string;
  readonly dir: string;
  /** Credentials when started with basic auth. */
  readonly auth?: { username: string; password: string };
  stop(): Promise<void>;
}

/** Starts `docker-registry` on a free loopback port; stopped by PID (`stop`). */
export async function startRegistry(
  opts: { auth?: { username: string; password: string } } = {},
): Promise<TestRegistry> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oci-registry-'));
  const port = await freePort();
  let authYaml = '';
  if (opts.auth) {
    // bcrypt, as the registry's htpasswd support requires (apache2-utils).
    const line = execFileSync('htpasswd', ['-nbB', opts.auth.username, opts.auth.password], {
      encoding: 'utf8',
    }).trim();
    fs.writeFileSync(path.join(dir, 'htpasswd'), `${line}\n`);
    authYaml = `auth:\n  htpasswd:\n    realm: fastvm-test\n    path: ${dir}/htpasswd\n`;
  }
  fs.writeFileSync(
    path.join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n` +
      `storage:\n  filesystem:\n    rootdirectory: ${dir}/data\n  delete:\n    enabled: true\n` +
      `http:\n  addr: 127.0.0.1:${port}\n${authYaml}`,
  );
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', path.join(dir, 'config.yml')], {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'registry.log'), 'a')],
  });
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.pid) {
      process.kill(child.pid, 'SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
          r(undefined);
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) break;
    try {
      const res = await fetch(`${url}/v2/`);
      if (res.status === 200 || res.status === 401) {
        return {
          host: `127.0.0.1:${port}`,
          url,
          dir,
          ...(opts.auth ? { auth: opts.auth } : {}),
          stop,
        };
      }
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const log = fs.readFileSync(path.join(dir, 'registry.log'), 'utf8').slice(-2000);
  await stop();
  throw new Error(`docker-registry did not start: ${log}`);
}

/**
 * A token-auth front for a registry started without auth: `/v2/*` answers 401 with a Bearer
 * challenge unless the request carries a token it issued; `/token` issues one for the right basic
 * credentials (or anonymously when `anonymous`), checking the scope names a pull of a repository.
 * Authorized requests are forwarded to the registry. It records the token requests it saw.
 */
export async function startTokenFront(
  registry: TestRegistry,
  creds: { username: string; password: string } | undefined,
  /** Requests a token is good for (then it has "expired"); default unlimited. */
  tokenUses = Infinity,
): Promise<TestRegistry & { tokenRequests: string[] }> {
  const tokens = new Map<string, number>();
  const tokenRequests: string[] = [];
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', base);
    if (u.pathname === '/token') {
      tokenRequests.push(u.search);
      const scope = u.searchParams.get('scope') ?? '';
      if (
        u.searchParams.get('service') !== 'fastvm-test' ||
        !/^repository:[a-z0-9/._-]+:pull/.test(scope)
      ) {
        res.writeHead(400).end();
        return;
      }
      if (creds) {
        const want = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
        if (req.headers.authorization !== want) {
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED' }] }));
          return;
        }
      }
      const token = crypto.randomBytes(16).toString('hex');
      tokens.set(token, tokenUses);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token, expires_in: 300 }));
      return;
    }
    const auth = req.headers.authorization ?? '';
    const left = tokens.get(auth.slice(7)) ?? 0;
    if (auth.startsWith('Bearer ')) tokens.set(auth.slice(7), left - 1);
    if (!auth.startsWith('Bearer ') || left <= 0) {
      const repo = /^\/v2\/(.+)\/(manifests|blobs)\//.exec(u.pathname)?.[1];
      res.writeHead(401, {
        'www-authenticate': `Bearer realm="${base}/token",service="fastvm-test"${repo ? `,scope="repository:${repo}:pull"` : ''}`,
        'content-type': 'application/json',
      });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED' }] }));
      return;
    }
    const upstream = http.request(
      `${registry.url}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: registry.host, authorization: '' } },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    host: `127.0.0.1:${port}`,
    url: base,
    dir: registry.dir,
    tokenRequests,
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// A small OCI image writer

/** One tar entry of a layer. */
export type LayerEntry =
  | { type: 'file'; path: string; data: string | Buffer; mode?: number; uid?: number; gid?: number }
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'link'; path: string; target: string }
  | { type: 'whiteout'; path: string }
  | { type: 'opaque'; dir: string }
  | { type: 'char'; path: string };

export type Compression = 'gzip' | 'zstd' | 'none';

/** A tar of `entries` (paths as written: tests may put `../x` in them). */
export async function tarOf(entries: readonly LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((r) => pack.on('end', () => r()));
  const mtime = new Date('2026-01-01T00:00:00Z');
  for (const e of entries) {
    switch (e.type) {
      case 'file':
        pack.entry(
          { name: e.path, mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime },
          typeof e.data === 'string' ? Buffer.from(e.data) : e.data,
        );
        break;
      case 'dir':
        pack.entry({ name: e.path, type: 'directory', mode: e.mode ?? 0o755, mtime });
        break;
      case 'symlink':
        pack.entry({ name: e.path, type: 'symlink', linkname: e.target, mode: 0o777, mtime });
        break;
      case 'link':
        pack.entry({ name: e.path, type: 'link', linkname: e.target, mtime });
        break;
      case 'whiteout': {
        const dir = path.posix.dirname(e.path);
        const wh = `${dir === '.' ? '' : `${dir}/`}.wh.${path.posix.basename(e.path)}`;
        pack.entry({ name: wh, mode: 0o644, mtime }, Buffer.alloc(0));
        break;
      }
      case 'opaque':
        pack.entry({ name: `${e.dir}/.wh..wh..opq`, mode: 0o644, mtime }, Buffer.alloc(0));
        break;
      case 'char':
        pack.entry({
          name: e.path,
          type: 'character-device',
          devmajor: 1,
          devminor: 3,
          mode: 0o666,
          mtime,
        });
        break;
    }
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** Compresses a tar as a layer blob; returns the blob and its media type. */
export function compressLayer(t: Buffer, how: Compression): { blob: Buffer; mediaType: string } {
  if (how === 'gzip') {
    return {
      blob: zlib.gzipSync(t, { level: 1 }),
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
    };
  }
  if (how === 'zstd') {
    const blob = execFileSync('zstd', ['-q', '-c', '-1'], { input: t, maxBuffer: 1 << 30 });
    return { blob, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' };
  }
  return { blob: t, mediaType: 'application/vnd.oci.image.layer.v1.tar' };
}

/** A layer from a host directory (GNU tar, numeric owners), e.g. a busybox root. */
export function tarOfDir(dir: string): Buffer {
  return execFileSync('tar', ['-C', dir, '--numeric-owner', '-cf', '-', '.'], {
    maxBuffer: 2 << 30,
  });
}

const digestOf = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

interface PushTarget {
  readonly url: string;
  readonly auth?: { username: string; password: string };
}

function authHeader(t: PushTarget): Record<string, string> {
  return t.auth
    ? {
        authorization: `Basic ${Buffer.from(`${t.auth.username}:${t.auth.password}`).toString('base64')}`,
      }
    : {};
}

/** Pushes one blob (monolithic upload: POST then PUT with the digest). */
export async function pushBlob(t: PushTarget, repo: string, blob: Buffer): Promise<string> {
  const digest = digestOf(blob);
  const start = await fetch(`${t.url}/v2/${repo}/blobs/uploads/`, {
    method: 'POST',
    headers: authHeader(t),
  });
  if (start.status !== 202) throw new Error(`blob upload start: HTTP ${start.status}`);
  const loc = new URL(start.headers.get('location')!, t.url);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, {
    method: 'PUT',
    headers: { ...authHeader(t), 'content-type': 'application/octet-stream' },
    body: new Uint8Array(blob),
  });
  if (put.status !== 201) throw new Error(`blob upload: HTTP ${put.status} ${await put.text()}`);
  return digest;
}

export async function pushManifest(
  t: PushTarget,
  repo: string,
  reference: string,
  body: Buffer,
  mediaType: string,
): Promise<string> {
  const res = await fetch(`${t.url}/v2/${repo}/manifests/${reference}`, {
    method: 'PUT',
    headers: { ...authHeader(t), 'content-type': mediaType },
    body: new Uint8Array(body),
  });
  if (res.status !== 201) throw new Error(`manifest push: HTTP ${res.status} ${await res.text()}`);
  return digestOf(body);
}

export interface ImageSpec {
  /** Layer tars, bottom first, with their compression. */
  readonly layers: ReadonlyArray<{ tar: Buffer; compression?: Compression }>;
  readonly config?: {
    Env?: string[];
    Cmd?: string[];
    Entrypoint?: string[];
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: Record<string, object>;
    Labels?: Record<string, string>;
  };
  /** Docker v2 media types instead of OCI. */
  readonly docker?: boolean;
}

/** Pushes an image; returns its manifest digest. */
export async function pushImage(
  t: PushTarget,
  repo: string,
  tag: string,
  spec: ImageSpec,
): Promise<{ digest: string; manifest: Buffer; bytes: number }> {
  const layers = [];
  const diffIds = [];
  let bytes = 0;
  for (const l of spec.layers) {
    const { blob, mediaType } = compressLayer(l.tar, l.compression ?? 'gzip');
    const digest = await pushBlob(t, repo, blob);
    bytes += blob.length;
    diffIds.push(digestOf(l.tar));
    layers.push({
      mediaType: spec.docker ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : mediaType,
      digest,
      size: blob.length,
    });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: spec.config ?? {},
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const configDigest = await pushBlob(t, repo, config);
  const mediaType = spec.docker
    ? 'application/vnd.docker.distribution.manifest.v2+json'
    : 'application/vnd.oci.image.manifest.v1+json';
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config: {
        mediaType: spec.docker
          ? 'application/vnd.docker.container.image.v1+json'
          : 'application/vnd.oci.image.config.v1+json',
        digest: configDigest,
        size: config.length,
      },
      layers,
    }),
  );
  const digest = await pushManifest(t, repo, tag, manifest, mediaType);
  return { digest, manifest, bytes };
}

/** Pushes an OCI index over already-pushed manifests (by digest, size and platform). */
export async function pushIndex(
  t: PushTarget,
  repo: string,
  tag: string,
  entries: ReadonlyArray<{
    digest: string;
    size: number;
    platform: { os: string; architecture: string; variant?: string };
  }>,
): Promise<string> {
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: entries.map((e) => ({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: e.digest,
        size: e.size,
        platform: e.platform,
      })),
    }),
  );
  return pushManifest(t, repo, tag, body, 'application/vnd.oci.image.index.v1+json');
}

/**
 * A minimal root with a shell: Debian's static busybox (`busybox-static`) with its applets as
 * symlinks in /bin. Undefined when the package is missing.
 */
export function busyboxLayer(): Promise<Buffer> | undefined {
  const bin = '/bin/busybox';
  if (!fs.existsSync(bin)) return undefined;
  try {
    execFileSync('ldd', [bin], { stdio: 'ignore' });
    return undefined; // dynamically linked: not the busybox-static package
  } catch {
    /* "not a dynamic executable" */
  }
  const applets = [
    'sh',
    'cat',
    'ls',
    'echo',
    'test',
    'mkdir',
    'rm',
    'true',
    'false',
    'id',
    'stat',
    'df',
    'sync',
    'sleep',
    'uname',
  ];
  return tarOf([
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/busybox', data: fs.readFileSync(bin), mode: 0o755 },
    ...applets.map((a) => ({ type: 'symlink' as const, path: `bin/${a}`, target: 'busybox' })),
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/passwd', data: 'root:x:0:0:root:/root:/bin/sh\n' },
    { type: 'file', path: 'etc/group', data: 'root:x:0:\n' },
  ]);
}
