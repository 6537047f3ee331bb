/**
 * Where a build's `FROM` (or an image import's `source.image`) comes from. The platform's own
 * base (`fastvm/base`, `debian:bookworm`) is a plain launch; any other reference is an OCI/Docker
 * v2 image pulled from its registry and turned into a bootable root filesystem
 * (`ImageSource.resolve`). The build service (`services/builds/`) only sees this seam; the OCI
 * side (registry client, layer unpacking, ext4 conversion) lives behind it.
 * @module
 */
import type { BaseImage } from '@fastvm/runtime';

/** The parts of an OCI image config a build or an import carries over (Docker's `config`). */
export interface ImageConfig {
  readonly env: Readonly<Record<string, string>>;
  readonly cmd?: readonly string[];
  readonly entrypoint?: readonly string[];
  readonly workingDir?: string;
  readonly user?: string;
  readonly exposedPorts?: readonly number[];
  readonly labels?: Readonly<Record<string, string>>;
}

export interface ImagePullOptions {
  readonly username?: string;
  readonly password?: string;
  /** `os/arch[/variant]`, default `linux/amd64`. */
  readonly platform?: string;
  readonly signal?: AbortSignal;
  /** Human-readable progress ("pull: layer 2/5, 31.0 MiB"), for events and build output. */
  readonly onProgress?: (message: string) => void;
}

/** A pulled image, ready to boot. */
export interface ResolvedImage {
  readonly baseImage: BaseImage;
  readonly config: ImageConfig;
  /** The manifest digest the reference resolved to (`sha256:…`). */
  readonly digest: string;
  /** Compressed bytes pulled (0 when every layer was cached). */
  readonly pulledBytes: number;
}

/** Why a pull failed; `message` is safe to show the user (never contains credentials). */
export type ImageErrorCode = 'not_found' | 'unauthorized' | 'unreachable' | 'invalid' | 'too_large';

export class ImageError extends Error {
  constructor(
    readonly code: ImageErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ImageError';
  }
}

export interface ImageSource {
  /** Pulls (or finds in the cache) `ref` and returns a bootable base. Throws `ImageError`. */
  resolve(ref: string, opts?: ImagePullOptions): Promise<ResolvedImage>;
}

const PLATFORM_BASES = new Set([
  'fastvm/base',
  'fastvm/base:latest',
  'debian:bookworm',
  'debian:12',
  'docker.io/library/debian:bookworm',
  'docker.io/library/debian:12',
]);

/** True for the names of the platform's own guest root filesystem (a plain launch, no pull). */
export function isPlatformBase(ref: string): boolean {
  return PLATFORM_BASES.has(ref.trim().toLowerCase());
}
