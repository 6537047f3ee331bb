/**
 * Which firewall generation (contract §3.8) a response speaks. The v1 and v2 shapes collide on
 * `ingress`, so every response picks one, per request, in this order:
 *
 * 1. `X-FastVM-Firewall-Version: 1` or `2` (our SDK sends it when asked for v2);
 * 2. the official clients, by their Stainless headers: Python (every version) reads v1, the
 *    TypeScript client reads v1 before 0.7 and v2 from 0.7 on;
 * 3. the shape of a firewall the same request wrote (launch, restore, fork, PUT/PATCH): the
 *    client just spoke it;
 * 4. otherwise v1, the seed's and the Python CLI's shape, so a v1 client never gets v2.
 * @module
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FirewallShape } from '../domain/index.js';

export const FIREWALL_VERSION_HEADER = 'x-fastvm-firewall-version';

/** What the shape is read from: a request (Fastify's, or Node's on the fast path). */
type WithHeaders = { headers: IncomingHttpHeaders };

function header(request: WithHeaders, name: string): string | undefined {
  const v = request.headers[name];
  return (Array.isArray(v) ? v[0] : v)?.trim().toLowerCase();
}

/** The generation `request`'s client reads (`written`: the shape of a firewall it sent). */
export function firewallShape(request: WithHeaders, written?: FirewallShape): FirewallShape {
  const explicit = header(request, FIREWALL_VERSION_HEADER);
  if (explicit === '1' || explicit === 'v1') return 1;
  if (explicit === '2' || explicit === 'v2') return 2;
  const lang = header(request, 'x-stainless-lang');
  if (lang === 'python') return 1;
  if (lang === 'js') {
    const [major = 0, minor = 0] = (header(request, 'x-stainless-package-version') ?? '')
      .split('.')
      .map((n) => Number.parseInt(n, 10) || 0);
    return major > 0 || minor >= 7 ? 2 : 1;
  }
  return written ?? 1;
}
