/**
 * Name normalisation and id helpers (contract §4.2.1).
 * @module
 */

/** Longest name kept, in Unicode code points ("runes"). */
export const MAX_NAME_RUNES = 64;

/**
 * Trims, collapses internal whitespace to one space and truncates to 64 code points (longer
 * names are truncated, never rejected). Returns `fallback` when nothing is left.
 */
export function normalizeName(raw: string | undefined | null, fallback: string): string {
  if (raw === undefined || raw === null) return fallback;
  const collapsed = raw.trim().replace(/\s+/gu, ' ');
  const runes = Array.from(collapsed);
  const name = (
    runes.length > MAX_NAME_RUNES ? runes.slice(0, MAX_NAME_RUNES).join('') : collapsed
  ).trimEnd();
  return name === '' ? fallback : name;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Whether `value` looks like one of our ids (lower-case UUID). */
export function isUuid(value: string): boolean {
  return UUID_RE.test(value);
}

/** A DNS-safe guest hostname derived from a VM name (falls back to `vm-<id8>`). */
export function hostnameFor(name: string, id: string): string {
  const host = name
    .toLowerCase()
    .normalize('NFKD')
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/g, '');
  return host === '' ? `vm-${id.slice(0, 8)}` : host;
}
