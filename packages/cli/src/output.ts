// Rendering: human tables and key/value blocks, wire-shaped JSON, colours, and the progress spinner.
import type {
  CommandResult,
  FirewallPolicy,
  FirewallRule,
  OrgQuotaUsage,
  OrgQuotaValues,
  Snapshot,
  VM,
} from 'fastvm';

/** A writable stream as the CLI uses it (process.stdout/stderr or a test double). */
export interface Out {
  write(chunk: string | Uint8Array): unknown;
  isTTY?: boolean | undefined;
}

/** Whether colours may be used on `out`. */
export function colorEnabled(out: Out, env: NodeJS.ProcessEnv): boolean {
  return out.isTTY === true && env['NO_COLOR'] === undefined && env['TERM'] !== 'dumb';
}

/** ANSI colouring that turns into the identity when disabled. */
export function palette(enabled: boolean): {
  green: (s: string) => string;
  yellow: (s: string) => string;
  red: (s: string) => string;
  dim: (s: string) => string;
  bold: (s: string) => string;
} {
  const wrap = (open: number, close: number) => (s: string) =>
    enabled ? `\x1b[${open}m${s}\x1b[${close}m` : s;
  return {
    green: wrap(32, 39),
    yellow: wrap(33, 39),
    red: wrap(31, 39),
    dim: wrap(2, 22),
    bold: wrap(1, 22),
  };
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

function width(s: string): number {
  return [...s.replace(ANSI, '')].length;
}

/** An aligned table: a header row, then one row per item; columns separated by two spaces. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(width(h), ...rows.map((r) => width(r[i] ?? ''))));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - width(c))))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** A key/value block, keys padded to one column. */
export function keyValues(pairs: Array<[string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}`.trimEnd()).join('\n') + '\n';
}

/** Compact age of an ISO timestamp: `12s ago`, `5m ago`, `3h ago`, `2d ago`. */
export function age(iso: string, now = Date.now()): string {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return iso || '-';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** `tcp:22`, `udp:8000-8010@2001:db8::/32` — the same syntax `-r` accepts. */
export function formatRule(r: FirewallRule): string {
  const ports =
    r.portEnd !== undefined && r.portEnd !== r.portStart
      ? `${r.portStart}-${r.portEnd}`
      : `${r.portStart}`;
  const cidrs = r.sourceCidrs && r.sourceCidrs.length > 0 ? `@${r.sourceCidrs.join(',')}` : '';
  return `${r.protocol}:${ports}${cidrs}`;
}

/** One-line summary of a firewall policy. */
export function formatFirewall(f: FirewallPolicy | null): string {
  if (!f) return '-';
  const rules = f.ingress ?? [];
  return rules.length === 0 ? f.mode : `${f.mode}: ${rules.map(formatRule).join(', ')}`;
}

// ---- wire-shaped JSON (the API's field names: memoryMiB, diskGiB) ----------------------------------

/** A firewall policy as the API spells it. */
export function firewallToJson(f: FirewallPolicy | null): Record<string, unknown> | null {
  if (!f) return null;
  return f.ingress === undefined
    ? { mode: f.mode }
    : { mode: f.mode, ingress: f.ingress.map((r) => ({ ...r })) };
}

/** A VM as the API spells it. */
export function vmToJson(vm: VM): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: vm.id,
    name: vm.name,
    orgId: vm.orgId,
    status: vm.status,
    machineName: vm.machineName,
    cpu: vm.cpu,
    memoryMiB: vm.memoryMib,
    diskGiB: vm.diskGib,
    sourceName: vm.sourceName,
    publicIpv6: vm.publicIpv6,
    firewall: firewallToJson(vm.firewall),
    metadata: vm.metadata,
    createdAt: vm.createdAt,
    deletedAt: vm.deletedAt,
    ttl: vm.ttl,
    pausedAt: vm.pausedAt,
    sourceSnapshotId: vm.sourceSnapshotId,
    volumes: (vm.volumes ?? []).map((a) => ({
      volumeId: a.volumeId,
      mountPath: a.mountPath,
      mountStatus: a.mountStatus,
      readOnly: a.readOnly,
      ...(a.statusMessage !== null ? { statusMessage: a.statusMessage } : {}),
    })),
  };
  if (vm.expiresAt !== null) out['expiresAtMs'] = vm.expiresAt;
  if (vm.ttlRemainingMs !== null) out['ttlRemainingMs'] = vm.ttlRemainingMs;
  return out;
}

/** A snapshot as the API spells it. */
export function snapshotToJson(s: Snapshot): Record<string, unknown> {
  return {
    id: s.id,
    name: s.name,
    orgId: s.orgId,
    vmId: s.vmId,
    status: s.status,
    firewall: firewallToJson(s.firewall),
    createdAt: s.createdAt,
    parentSnapshotId: s.parentSnapshotId,
    ...(s.digests ? { digests: s.digests } : {}),
  };
}

function quotaValuesToJson(v: OrgQuotaValues): Record<string, number> {
  return {
    vcpu: v.vcpu,
    memoryMiB: v.memoryMib,
    diskGiB: v.diskGib,
    snapshotCount: v.snapshotCount,
  };
}

/** Quotas as the API spells them. */
export function quotasToJson(q: OrgQuotaUsage): Record<string, unknown> {
  return { orgId: q.orgId, limits: quotaValuesToJson(q.limits), usage: quotaValuesToJson(q.usage) };
}

/** An exec result as the API spells it. */
export function resultToJson(r: CommandResult): Record<string, unknown> {
  return { ...r };
}

/** JSON text for `--json`, newline-terminated. */
export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

// ---- progress --------------------------------------------------------------------------------------

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * A one-line spinner with elapsed time on stderr. Draws nothing unless the stream is a TTY, so
 * pipes and logs stay clean.
 */
export class Spinner {
  readonly #out: Out;
  readonly #enabled: boolean;
  #timer: NodeJS.Timeout | undefined;
  #text = '';
  #frame = 0;
  #started = 0;
  #stopped = false;

  /**
   * @param out - Where to draw (stderr).
   */
  constructor(out: Out) {
    this.#out = out;
    this.#enabled = out.isTTY === true;
  }

  /** Starts (or retitles) the spinner. */
  start(text: string): this {
    this.#text = text;
    this.#started = performance.now();
    this.#stopped = false;
    if (!this.#enabled || this.#timer) return this;
    this.#draw();
    this.#timer = setInterval(() => this.#draw(), 80);
    return this;
  }

  /** Seconds since `start`, one decimal. */
  get elapsed(): string {
    return `${((performance.now() - this.#started) / 1000).toFixed(1)}s`;
  }

  /** Stops and clears the line; prints `finalLine` (TTY only) when given. */
  stop(finalLine?: string): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (!this.#enabled || this.#stopped) return;
    this.#stopped = true;
    this.#out.write('\r\x1b[2K');
    if (finalLine) this.#out.write(`${finalLine}\n`);
  }

  #draw(): void {
    const frame = FRAMES[this.#frame++ % FRAMES.length]!;
    this.#out.write(`\r\x1b[2K${frame} ${this.#text} ${this.elapsed}`);
  }
}

/** `1.5 KiB`, `22.4 MiB`, `3.1 GiB`. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
}

/**
 * A one-line progress bar on stderr: label, percentage, bar, bytes and rate. Draws nothing unless
 * the stream is a TTY (at most ten redraws a second); without a known total it shows bytes only.
 */
export class ProgressBar {
  readonly #out: Out;
  readonly #enabled: boolean;
  readonly #label: string;
  readonly #started = performance.now();
  #lastDraw = 0;
  #stopped = false;

  /**
   * @param out - Where to draw (stderr).
   * @param label - What is being copied.
   */
  constructor(out: Out, label: string) {
    this.#out = out;
    this.#enabled = out.isTTY === true;
    this.#label = label.length > 30 ? `…${label.slice(-29)}` : label;
  }

  /** Redraws with the bytes moved so far. */
  update(bytes: number, total: number | undefined): void {
    if (!this.#enabled || this.#stopped) return;
    const now = performance.now();
    const final = total !== undefined && bytes >= total;
    if (!final && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const secs = (now - this.#started) / 1000;
    const rate = secs > 0.2 ? `  ${formatBytes(bytes / secs)}/s` : '';
    let line: string;
    if (total !== undefined && total > 0) {
      const frac = Math.min(1, bytes / total);
      const width = 24;
      const full = Math.round(frac * width);
      line =
        `${this.#label}  ${String(Math.floor(frac * 100)).padStart(3)}% ` +
        `[${'#'.repeat(full)}${'-'.repeat(width - full)}]  ` +
        `${formatBytes(bytes)} / ${formatBytes(total)}${rate}`;
    } else {
      line = `${this.#label}  ${formatBytes(bytes)}${rate}`;
    }
    this.#out.write(`\r\x1b[2K${line}`);
  }

  /** Clears the line; prints `finalLine` (TTY only) when given. */
  stop(finalLine?: string): void {
    if (!this.#enabled || this.#stopped) return;
    this.#stopped = true;
    this.#out.write('\r\x1b[2K');
    if (finalLine) this.#out.write(`${finalLine}\n`);
  }
}
