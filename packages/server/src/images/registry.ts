/**
 * A client of the OCI distribution API (Docker registry v2) for pulls: manifest negotiation (OCI
 * index and Docker manifest list → one platform; OCI and Docker v2 image manifests), Bearer token
 * auth (the `WWW-Authenticate` challenge sends us to a token endpoint, with the user's basic
 * credentials when given) and Basic auth, and blob downloads streamed to a file with their sha256
 * checked and their size capped. Every failure is an `ImageError` whose message is safe to show:
 * it names the registry and repository, never the credentials. Plain http only for loopback and
 * `FASTVM_INSECURE_REGISTRIES` (`reference.ts`).
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ImageError } from '../services/image-source.js';
import { apiHost, type ImageReference, isInsecureRegistry } from './reference.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const;

const ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest].join(
  ', ',
);

/** A content descriptor (manifest entry, config, layer). */
export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly platform?: { os?: string; architecture?: string; variant?: string };
}

/** An image manifest (one platform). */
export interface ImageManifest {
  readonly mediaType: string;
  readonly config: Descriptor;
  readonly layers: readonly Descriptor[];
}

export interface RegistryOptions {
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Per metadata request (manifest, config, token), ms. Default 30 s. */
  readonly requestTimeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** Manifests and configs are small JSON documents. */
export const MAX_MANIFEST_BYTES = 4 << 20;

const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function sha256(data: Buffer): string {
  return `sha256:${crypto.createHash('sha256').update(data).digest('hex')}`;
}

function errText(err: unknown): string {
  const e = err as { cause?: { code?: string; message?: string }; message?: string };
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
}

export class RegistryClient {
  readonly #ref: ImageReference;
  readonly #opts: RegistryOptions;
  readonly #base: string;
  /** `Authorization` header value once a challenge was answered. */
  #auth: string | undefined;

  constructor(ref: ImageReference, opts: RegistryOptions = {}) {
    this.#ref = ref;
    this.#opts = opts;
    const host = apiHost(ref.registry);
    this.#base = `${isInsecureRegistry(ref.registry, opts.env) ? 'http' : 'https'}://${host}`;
  }

  /** `registry/repository`, for messages. */
  get name(): string {
    return `${this.#ref.registry}/${this.#ref.repository}`;
  }

  #signal(timeoutMs?: number): AbortSignal {
    const t = AbortSignal.timeout(timeoutMs ?? this.#opts.requestTimeoutMs ?? 30_000);
    return this.#opts.signal ? AbortSignal.any([this.#opts.signal, t]) : t;
  }

  /** One fetch; network failures → `unreachable` (a cancel by the caller's signal is rethrown). */
  async #fetch(
    url: string,
    headers: Record<string, string>,
    timeoutMs?: number,
  ): Promise<Response> {
    try {
      return await fetch(url, { headers, signal: this.#signal(timeoutMs), redirect: 'follow' });
    } catch (err) {
      if (this.#opts.signal?.aborted) throw this.#opts.signal.reason;
      const host = new URL(url).host;
      const timedOut = (err as Error)?.name === 'TimeoutError';
      throw new ImageError(
        'unreachable',
        `registry ${host} is unreachable: ${timedOut ? 'timed out' : errText(err)}`,
      );
    }
  }

  /** GET on the registry API, answering an auth challenge once. */
  async #get(apiPath: string, accept?: string, timeoutMs?: number): Promise<Response> {
    const url = `${this.#base}/v2/${apiPath}`;
    const headers = (): Record<string, string> => ({
      ...(accept ? { accept } : {}),
      ...(this.#auth ? { authorization: this.#auth } : {}),
    });
    let res = await this.#fetch(url, headers(), timeoutMs);
    // The first request, or a token that expired during a long pull: answer the challenge once.
    if (res.status === 401) {
      const challenge = res.headers.get('www-authenticate') ?? '';
      await res.body?.cancel().catch(() => {});
      this.#auth = undefined;
      await this.#authenticate(challenge);
      res = await this.#fetch(url, headers(), timeoutMs);
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel().catch(() => {});
      throw new ImageError(
        'unauthorized',
        this.#opts.username
          ? `registry ${this.#ref.registry} refused the credentials for ${this.#ref.repository}`
          : `registry ${this.#ref.registry} requires credentials for ${this.#ref.repository} (registryUsername/registryPassword)`,
      );
    }
    return res;
  }

  async #authenticate(challenge: string): Promise<void> {
    const { username, password } = this.#opts;
    const basic =
      username !== undefined || password !== undefined
        ? `Basic ${Buffer.from(`${username ?? ''}:${password ?? ''}`).toString('base64')}`
        : undefined;
    const scheme = challenge.trim().split(/\s+/)[0]?.toLowerCase();
    if (scheme === 'basic') {
      if (!basic) {
        throw new ImageError(
          'unauthorized',
          `registry ${this.#ref.registry} requires credentials for ${this.#ref.repository} (registryUsername/registryPassword)`,
        );
      }
      this.#auth = basic;
      return;
    }
    if (scheme !== 'bearer') {
      throw new ImageError(
        'unauthorized',
        `registry ${this.#ref.registry} asked for an unsupported authentication (${scheme || 'none given'})`,
      );
    }
    const params = parseChallenge(challenge);
    const realm = params.realm;
    let url: URL;
    try {
      url = new URL(realm ?? '');
    } catch {
      throw new ImageError('unauthorized', `registry ${this.#ref.registry} sent a bad token realm`);
    }
    if (
      url.protocol !== 'https:' &&
      !(url.protocol === 'http:' && isInsecureRegistry(url.host, this.#opts.env))
    ) {
      throw new ImageError(
        'unauthorized',
        `registry ${this.#ref.registry} sent a token realm over plain http (${url.host}): refused`,
      );
    }
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', params.scope ?? `repository:${this.#ref.repository}:pull`);
    const res = await this.#fetch(url.toString(), basic ? { authorization: basic } : {});
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel().catch(() => {});
      throw new ImageError(
        'unauthorized',
        basic
          ? `registry ${this.#ref.registry} refused the credentials for ${this.#ref.repository}`
          : `registry ${this.#ref.registry} requires credentials for ${this.#ref.repository} (registryUsername/registryPassword)`,
      );
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new ImageError(
        'unreachable',
        `the token service of registry ${this.#ref.registry} answered HTTP ${res.status}`,
      );
    }
    const body = (await readJson(res, 'token', this.#ref.registry)) as {
      token?: string;
      access_token?: string;
    };
    const token = body.token ?? body.access_token;
    if (typeof token !== 'string' || !token) {
      throw new ImageError('unauthorized', `registry ${this.#ref.registry} gave no token`);
    }
    this.#auth = `Bearer ${token}`;
  }

  /** Throws the `ImageError` for a non-2xx answer about `what`. */
  async #fail(res: Response, what: string): Promise<never> {
    let detail = '';
    try {
      const j = JSON.parse((await res.text()).slice(0, 4096)) as {
        errors?: Array<{ code?: string }>;
      };
      if (j.errors?.[0]?.code) detail = ` (${j.errors[0].code})`;
    } catch {
      /* not JSON */
    }
    if (res.status === 404) {
      throw new ImageError('not_found', `${what} not found in ${this.name}${detail}`);
    }
    if (res.status === 429) {
      throw new ImageError('unreachable', `registry ${this.#ref.registry} is rate limiting pulls`);
    }
    throw new ImageError(
      res.status >= 500 ? 'unreachable' : 'invalid',
      `registry ${this.#ref.registry} answered HTTP ${res.status} for ${what}${detail}`,
    );
  }

  /** A manifest (or index) by tag or digest, its digest checked when asked by digest. */
  async manifest(reference: string): Promise<{ body: Buffer; mediaType: string; digest: string }> {
    const what = `manifest ${reference}`;
    const res = await this.#get(`${this.#ref.repository}/manifests/${reference}`, ACCEPT);
    if (!res.ok) await this.#fail(res, DIGEST.test(reference) ? what : `tag ${reference}`);
    const body = await readCapped(res, MAX_MANIFEST_BYTES, what, this.#ref.registry);
    const digest = sha256(body);
    if (DIGEST.test(reference) && digest !== reference) {
      throw new ImageError('invalid', `${what} of ${this.name} does not match its digest`);
    }
    let mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    let parsed: {
      mediaType?: string;
      manifests?: unknown;
      layers?: unknown;
      schemaVersion?: number;
    };
    try {
      parsed = JSON.parse(body.toString('utf8')) as typeof parsed;
    } catch {
      throw new ImageError('invalid', `${what} of ${this.name} is not JSON`);
    }
    if (parsed.schemaVersion === 1) {
      throw new ImageError(
        'invalid',
        `${this.name} uses Docker's schema 1 manifests, which are not supported`,
      );
    }
    if (
      ![MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest].includes(
        mediaType as never,
      )
    ) {
      mediaType =
        parsed.mediaType ?? (Array.isArray(parsed.manifests) ? MEDIA.ociIndex : MEDIA.ociManifest);
    }
    return { body, mediaType, digest };
  }

  /**
   * The image manifest for `platform` (`os/arch[/variant]`): a tag or digest naming an index is
   * followed to the matching entry. Returns the manifest and its digest (the image's identity).
   */
  async imageManifest(
    reference: string,
    platform = 'linux/amd64',
  ): Promise<{ manifest: ImageManifest; digest: string }> {
    let m = await this.manifest(reference);
    if (m.mediaType === MEDIA.ociIndex || m.mediaType === MEDIA.dockerList) {
      const index = JSON.parse(m.body.toString('utf8')) as { manifests?: Descriptor[] };
      const entry = pickPlatform(index.manifests ?? [], platform);
      if (!entry) {
        const have = (index.manifests ?? [])
          .map((d) =>
            [d.platform?.os, d.platform?.architecture, d.platform?.variant]
              .filter(Boolean)
              .join('/'),
          )
          .filter((p) => p && !p.startsWith('unknown'));
        throw new ImageError(
          'not_found',
          `${this.name}:${reference} has no ${platform} image${have.length ? ` (it has ${[...new Set(have)].join(', ')})` : ''}`,
        );
      }
      if (!DIGEST.test(entry.digest))
        throw new ImageError('invalid', `${this.name}: bad digest in its index`);
      m = await this.manifest(entry.digest);
      if (m.mediaType === MEDIA.ociIndex || m.mediaType === MEDIA.dockerList) {
        throw new ImageError('invalid', `${this.name}: an index inside an index is not supported`);
      }
    }
    const manifest = JSON.parse(m.body.toString('utf8')) as ImageManifest;
    if (
      !manifest.config ||
      !Array.isArray(manifest.layers) ||
      !DIGEST.test(manifest.config.digest)
    ) {
      throw new ImageError('invalid', `the manifest of ${this.name} has no config or layers`);
    }
    for (const l of manifest.layers) {
      if (!DIGEST.test(l.digest) || !(Number.isSafeInteger(l.size) && l.size >= 0)) {
        throw new ImageError('invalid', `the manifest of ${this.name} has a bad layer descriptor`);
      }
    }
    return { manifest: { ...manifest, mediaType: m.mediaType }, digest: m.digest };
  }

  /** A small blob (the image config) in memory, its digest checked. */
  async smallBlob(desc: Descriptor): Promise<Buffer> {
    const res = await this.#get(`${this.#ref.repository}/blobs/${desc.digest}`);
    if (!res.ok) await this.#fail(res, `blob ${desc.digest}`);
    const body = await readCapped(
      res,
      MAX_MANIFEST_BYTES,
      `blob ${desc.digest}`,
      this.#ref.registry,
    );
    if (sha256(body) !== desc.digest) {
      throw new ImageError(
        'invalid',
        `blob ${desc.digest} of ${this.name} does not match its digest`,
      );
    }
    return body;
  }

  /**
   * Streams a blob into `file`, checking its sha256 and refusing more than `maxBytes` (or than
   * the descriptor's size). `onBytes` gets each chunk's length.
   */
  async downloadBlob(
    desc: Descriptor,
    file: string,
    maxBytes: number,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    if (desc.size > maxBytes) {
      throw new ImageError(
        'too_large',
        `layer ${desc.digest} of ${this.name} is larger than allowed`,
      );
    }
    // Blobs stream for as long as they need; the caller's signal still cancels.
    const res = await this.#get(
      `${this.#ref.repository}/blobs/${desc.digest}`,
      undefined,
      6 * 3600_000,
    );
    if (!res.ok) await this.#fail(res, `blob ${desc.digest}`);
    if (!res.body) throw new ImageError('invalid', `blob ${desc.digest} of ${this.name} is empty`);
    const hash = crypto.createHash('sha256');
    let seen = 0;
    const limit = Math.min(maxBytes, desc.size || maxBytes);
    const check = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        seen += chunk.length;
        if (seen > limit) {
          cb(new ImageError('too_large', `blob ${desc.digest} is larger than its descriptor says`));
          return;
        }
        hash.update(chunk);
        onBytes?.(chunk.length);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as never), check, fs.createWriteStream(file));
    } catch (err) {
      if (err instanceof ImageError) throw err;
      if (this.#opts.signal?.aborted) throw this.#opts.signal.reason;
      throw new ImageError(
        'unreachable',
        `download of ${desc.digest} from ${this.#ref.registry} failed: ${errText(err)}`,
      );
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (digest !== desc.digest || (desc.size && seen !== desc.size)) {
      throw new ImageError(
        'invalid',
        `blob ${desc.digest} of ${this.name} does not match its digest`,
      );
    }
  }
}

/** `Bearer realm="…",service="…",scope="…"` → its parameters. */
export function parseChallenge(header: string): Record<string, string> {
  const out: Record<string, string> = {};
  const rest = header.replace(/^\s*\S+\s*/, '');
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (let m = re.exec(rest); m; m = re.exec(rest)) {
    out[m[1]!.toLowerCase()] = (m[2] ?? m[3] ?? '').replace(/\\(.)/g, '$1');
  }
  return out;
}

/**
 * The index entry for `platform` (`os/arch[/variant]`): os and architecture must match; a
 * requested variant must match, else an entry without one (or `v8` for arm64) is preferred.
 */
export function pickPlatform(
  entries: readonly Descriptor[],
  platform: string,
): Descriptor | undefined {
  const [os, arch, variant] = platform.split('/');
  const matching = entries.filter(
    (d) => d.platform?.os === os && d.platform?.architecture === arch,
  );
  if (variant) return matching.find((d) => d.platform?.variant === variant);
  return matching.find((d) => !d.platform?.variant) ?? matching[0];
}

async function readCapped(
  res: Response,
  max: number,
  what: string,
  registry: string,
): Promise<Buffer> {
  const len = Number(res.headers.get('content-length') ?? 0);
  if (len > max) {
    await res.body?.cancel().catch(() => {});
    throw new ImageError('too_large', `${what} from ${registry} is larger than ${max} bytes`);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  if (res.body) {
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
      n += c.length;
      if (n > max)
        throw new ImageError('too_large', `${what} from ${registry} is larger than ${max} bytes`);
      chunks.push(Buffer.from(c));
    }
  }
  return Buffer.concat(chunks);
}

async function readJson(res: Response, what: string, registry: string): Promise<unknown> {
  const body = await readCapped(res, MAX_MANIFEST_BYTES, what, registry);
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new ImageError('invalid', `${what} from ${registry} is not JSON`);
  }
}
