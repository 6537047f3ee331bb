/**
 * The web console (`packages/dashboard`, built by `scripts/build.mjs` into its `dist/`), served
 * at `/` on the API's port:
 * - `GET /` → `index.html`, revalidated on every load; so are the console's client-side routes
 *   (`/vms`, `/vms/<id>`, `/snapshots`, `/snapshots/<id>`, `/org`: `PAGE_RE`, kept in step with
 *   `packages/dashboard/src/app.tsx`) when a browser asks for them as a page (GET/HEAD accepting
 *   `text/html`), so they can be reloaded and bookmarked; everything else keeps the API's JSON 404;
 * - `GET /assets/<file>` → the built scripts, styles and fonts (content-hashed names, cached for a
 *   year).
 * Every answer carries a Content-Security-Policy that allows requests to this origin only.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { App } from '../app.js';
import { ApiError } from '../errors.js';

/**
 * Same-origin only: scripts, styles, fonts, images and fetch/WebSocket connections (`'self'`
 * covers `ws:`/`wss:` to this host). Styles also allow inline `style` elements, which the
 * terminal (xterm.js) creates for its theme; nothing inline may run as script.
 */
export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** Where `scripts/build.mjs` writes the dashboard, relative to this file in the repository. */
export function defaultDashboardDir(): string {
  return fileURLToPath(new URL('../../../dashboard/dist', import.meta.url));
}

/** The console's client-side routes: the only paths besides `/` answered with `index.html`. */
export const PAGE_RE = /^\/(?:vms(?:\/[^/]+)?|snapshots(?:\/[^/]+)?|org)\/?$/;

/** `/assets/…` file names as Vite writes them: no dot segments, no separators but `/`. */
const ASSET_RE = /^\/assets\/[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/;

function setSecurityHeaders(reply: FastifyReply): void {
  reply.header('content-security-policy', DASHBOARD_CSP);
  reply.header('x-content-type-options', 'nosniff');
  reply.header('referrer-policy', 'no-referrer');
  reply.header('x-frame-options', 'DENY');
}

/**
 * Registers the dashboard's routes over `dir` (a built `dist/`). When `dir` has no `index.html`
 * the routes still exist and answer 404 saying how to build it. Returns the SPA fallback for the
 * app's not-found handler: true when it answered the request.
 */
export function registerDashboard(
  app: App,
  dir: string,
): (request: FastifyRequest, reply: FastifyReply) => boolean {
  const root = path.resolve(dir);
  const notBuilt = () =>
    new ApiError(
      'not_found',
      `the dashboard is not built: run \`npm run build\` (no index.html in ${root})`,
    );

  const sendIndex = (reply: FastifyReply): void => {
    let html: Buffer;
    try {
      html = fs.readFileSync(path.join(root, 'index.html'));
    } catch {
      throw notBuilt();
    }
    setSecurityHeaders(reply);
    void reply
      .header('cache-control', 'no-cache')
      .type(CONTENT_TYPES['.html'] as string)
      .send(html);
  };

  const config = { public: true, hidden: true } as const;
  app.get('/', { config }, async (_request, reply) => sendIndex(reply));
  app.get('/index.html', { config }, async (_request, reply) => sendIndex(reply));
  app.get('/assets/*', { config }, async (request, reply) => {
    const urlPath = request.url.split('?')[0] as string;
    const file = path.join(root, urlPath);
    const type = CONTENT_TYPES[path.extname(file)];
    let body: Buffer | undefined;
    const safe = ASSET_RE.test(urlPath) && !urlPath.split('/').some((s) => s === '.' || s === '..');
    if (safe && type && file.startsWith(root + path.sep)) {
      try {
        body = fs.readFileSync(file);
      } catch {
        body = undefined;
      }
    }
    if (!body) throw new ApiError('not_found', `no dashboard asset ${urlPath}`);
    setSecurityHeaders(reply);
    return reply
      .header('cache-control', 'public, max-age=31536000, immutable')
      .type(type as string)
      .send(body);
  });

  return (request, reply) => {
    const urlPath = request.url.split('?')[0] as string;
    if (request.method !== 'GET' && request.method !== 'HEAD') return false;
    if (!PAGE_RE.test(urlPath)) return false;
    if (!(request.headers.accept ?? '').includes('text/html')) return false;
    sendIndex(reply);
    return true;
  };
}
