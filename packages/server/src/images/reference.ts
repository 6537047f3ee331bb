/**
 * Image references as Docker reads them: `[registry[:port]/]path[:tag][@sha256:hex]`. A first
 * component with a `.` or `:`, or `localhost`, is a registry; otherwise Docker Hub, where a
 * one-component path gets `library/`. No tag and no digest means `latest`.
 * @module
 */
import { ImageError } from '../services/image-source.js';

export const DOCKER_HUB = 'docker.io';
/** Where Docker Hub's registry API answers. */
const DOCKER_HUB_API = 'registry-1.docker.io';

export interface ImageReference {
  /** Registry host as written (`docker.io`, `127.0.0.1:5000`, `ghcr.io`). */
  readonly registry: string;
  /** Repository path (`library/debian`, `org/app`). */
  readonly repository: string;
  readonly tag?: string;
  /** `sha256:<64 hex>` when pinned. */
  readonly digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const HOST =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$/;

function invalid(ref: string, why: string): ImageError {
  return new ImageError('invalid', `invalid image reference ${JSON.stringify(ref)}: ${why}`);
}

/** Parses `ref`; throws `ImageError('invalid')`. */
export function parseReference(ref: string): ImageReference {
  const input = ref.trim();
  if (!input || input.length > 512) throw invalid(ref.slice(0, 80), 'empty or too long');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(input, 'the digest must be sha256:<64 hex digits>');
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `bad tag ${JSON.stringify(tag)}`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
    if (!HOST.test(registry)) throw invalid(input, `bad registry ${JSON.stringify(registry)}`);
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API) registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p))) {
    throw invalid(input, 'the repository must be lowercase letters, digits and separators');
  }
  return {
    registry,
    repository: parts.join('/'),
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
    ...(tag === undefined && digest === undefined ? { tag: 'latest' } : {}),
  };
}

/** The canonical form (`docker.io/library/debian:bookworm`, `host/x@sha256:…`). */
export function formatReference(r: ImageReference): string {
  return `${r.registry}/${r.repository}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** Host[:port] the registry API answers on. */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/**
 * Registries spoken to over plain http: loopback always, and the hosts (`host` or `host:port`)
 * listed in `FASTVM_INSECURE_REGISTRIES` (comma-separated).
 */
export function isInsecureRegistry(registry: string, env = process.env): boolean {
  const host = registry.replace(/:[0-9]+$/, '');
  if (host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host)) return true;
  const listed = (env.FASTVM_INSECURE_REGISTRIES ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  return listed.includes(registry.toLowerCase()) || listed.includes(host.toLowerCase());
}
