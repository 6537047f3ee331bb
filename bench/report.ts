/**
 * Turns recorded samples into `latest.json` / `latest.md` and the printed table: scenarios,
 * ratios to the baselines of the same run, and the targets (issue #3's runtime targets, the SDK's
 * round trips, the CLI's start-up).
 */
import fs from 'node:fs';
import path from 'node:path';
import { type Recorder, type ScenarioDetail, type ScenarioResult, round } from './stats.js';

export interface Machine {
  cores: number;
  memMiB: number;
  accel: 'kvm' | 'tcg';
  cpu: string;
  kernel: string;
  qemu: string;
}

export interface Target {
  target: string;
  measured: string;
  value: number | null;
  ok: boolean | null;
}

export interface Report {
  date: string;
  revision: string;
  machine: Machine;
  mode: 'quick' | 'full';
  groups: string[];
  durationS: number;
  load: { start: number[]; end: number[]; otherQemuAtStart: number };
  scenarios: Record<string, ScenarioResult>;
  ratios: Record<string, number>;
  derived: Record<string, number>;
  targets: Target[];
  details: Record<string, ScenarioDetail>;
  phases: Record<string, Record<string, number>>;
  errors: string[];
  info: string[];
}

/** The contract's scenario names (issue #6), in table order; extras follow. */
export const REQUIRED = [
  'restore_2g',
  'restore_8g',
  'launch',
  'cold_boot',
  'snapshot_pause_0',
  'snapshot_pause_64',
  'snapshot_pause_256',
  'snapshot_gen2_256',
  'fanout_10_all',
  'fanout_50_all',
  'fanout_mem_per_fork',
  'plain_restore_256',
  'exec_sdk',
  'exec_py',
  'exec_agent',
  'api_h2_rps',
  'api_h1_rps',
] as const;

const RATIOS: [string, string][] = [
  ['restore_8g', 'restore_2g'],
  ['restore_2g_unflattened', 'restore_2g'],
  ['launch', 'cold_boot'],
  ['launch', 'cold_boot_first_cmd'],
  ['launch_unpooled', 'cold_boot_first_cmd'],
  ['launch', 'launch_unpooled'],
  ['launch_unpooled_ready', 'cold_boot'],
  ['plain_restore_256', 'restore_256'],
  ['plain_restore_256', 'restore_2g'],
  ['plain_restore_256_pss', 'restore_256_pss'],
  ['snapshot_pause_256', 'snapshot_pause_0'],
  ['snapshot_total_256', 'snapshot_total_0'],
  ['snapshot_gen2_total_256', 'snapshot_gen2_total_0'],
  ['snapshot_gen2_8g_0', 'snapshot_gen2_0'],
  ['snapshot_gen2_8g_total_0', 'snapshot_gen2_total_0'],
  ['fanout_50_all', 'fanout_10_all'],
  ['fork_10_api', 'fanout_10_all'],
  ['exec_sdk', 'exec_agent'],
  ['exec_py', 'exec_sdk'],
  ['api_h2_rps', 'api_h1_rps'],
  ['api_launch_host400', 'api_launch_host0'],
  ['api_h2_server_cpu_per_req', 'api_h1_server_cpu_per_req'],
  ['api_h2load_server_cpu_per_req', 'api_h2_floor_server_cpu_per_req'],
  ['api_h2load_rps', 'api_h2_floor_rps'],
  ['api_h1load_server_cpu_per_req', 'api_h1_floor_server_cpu_per_req'],
  ['api_h1load_rps', 'api_h1_floor_rps'],
  ['cli_start', 'node_start'],
  // Networked / FASTVM_NETWORK=off, same run (bench/net.ts, issue 23).
  ['fork10_net', 'fork10_net_off'],
  ['fork10_net_ready', 'fork10_net_ready_off'],
  ['restore_run_net', 'restore_run_net_off'],
  ['launch_run_net', 'launch_run_net_off'],
  ['egress_connect', 'egress_connect_off'],
  ['egress_resolve', 'egress_resolve_off'],
  // Through the service proxy / to the same VM port directly, same run (bench/proxy.ts, issue 14).
  ['proxy_rps', 'proxy_direct_rps'],
  ['proxy_latency', 'proxy_direct_latency'],
  // The web console in Chromium / its floor, same run (bench/dashboard.ts, issue 21).
  ['dash_load_cold', 'dash_blank'],
  ['dash_load_warm', 'dash_blank'],
  ['dash_exec', 'dash_exec_fetch'],
];

export function buildReport(o: {
  rec: Recorder;
  date: string;
  revision: string;
  machine: Machine;
  quick: boolean;
  groups: string[];
  /** Every group ran (a full set of scenarios is expected). */
  allGroups: boolean;
  durationS: number;
  load: Report['load'];
  errors: string[];
  info: string[];
}): Report {
  const { scenarios, details } = o.rec.scenarios();
  const p50 = (n: string) => scenarios[n]?.p50;
  const ratios: Record<string, number> = {};
  for (const [a, b] of RATIOS) {
    const x = p50(a);
    const y = p50(b);
    if (x !== undefined && y !== undefined && y !== 0) ratios[`${a}/${b}`] = round(x / y);
  }
  const derived: Record<string, number> = {};
  if (p50('exec_sdk') !== undefined && p50('exec_agent') !== undefined) {
    derived['exec_http_overhead_ms'] = round(p50('exec_sdk')! - p50('exec_agent')!);
  }
  if (p50('exec_py') !== undefined && p50('exec_sdk') !== undefined) {
    derived['exec_py_minus_sdk_ms'] = round(p50('exec_py')! - p50('exec_sdk')!);
  }
  const sdkP99 = details['exec_sdk']?.p99;
  const agentP99 = details['exec_agent']?.p99;
  if (sdkP99 !== undefined) derived['exec_sdk_p99_ms'] = sdkP99;
  if (agentP99 !== undefined) derived['exec_agent_p99_ms'] = agentP99;

  const missing = o.allGroups ? REQUIRED.filter((n) => !scenarios[n]) : [];
  const errors = [...o.errors];
  if (missing.length) errors.push(`missing scenarios: ${missing.join(', ')}`);

  return {
    date: o.date,
    revision: o.revision,
    machine: o.machine,
    mode: o.quick ? 'quick' : 'full',
    groups: o.groups,
    durationS: round(o.durationS),
    load: {
      start: o.load.start.map(round),
      end: o.load.end.map(round),
      otherQemuAtStart: o.load.otherQemuAtStart,
    },
    scenarios: orderScenarios(scenarios),
    ratios,
    derived,
    targets: targets(scenarios, ratios, errors),
    details,
    phases: o.rec.phases(),
    errors,
    info: o.info,
  };
}

function orderScenarios(s: Record<string, ScenarioResult>): Record<string, ScenarioResult> {
  const out: Record<string, ScenarioResult> = {};
  for (const n of REQUIRED) if (s[n]) out[n] = s[n];
  for (const n of Object.keys(s).sort()) if (!out[n]) out[n] = s[n]!;
  return out;
}

/** The targets next to what this run measured. */
function targets(
  s: Record<string, ScenarioResult>,
  r: Record<string, number>,
  errors: string[],
): Target[] {
  const t: Target[] = [];
  const le = (target: string, measured: string, value: number | undefined, limit: number) =>
    t.push({
      target,
      measured,
      value: value ?? null,
      ok: value === undefined ? null : value <= limit,
    });
  le('restore → first command p50 ≤ 100 ms', 'restore_2g p50 (ms)', s.restore_2g?.p50, 100);
  le(
    'restore flat in RAM size (8 GiB vs small within 1.5x)',
    'restore_8g / restore_2g p50',
    r['restore_8g/restore_2g'],
    1.5,
  );
  le(
    'launch of a fresh VM p50 ≤ 150 ms',
    'launch p50 (ms, to first command; warm pool of 1)',
    s.launch?.p50,
    150,
  );
  le(
    'launch of a fresh VM p50 ≤ 150 ms (no pool)',
    'launch_unpooled p50 (ms, to first command)',
    s.launch_unpooled?.p50,
    150,
  );
  le(
    'snapshot with ≤ 256 MiB changed: pause ≤ 150 ms',
    `snapshot_pause_256 p50 (ms; max ${fmt(s.snapshot_pause_256?.max)})`,
    s.snapshot_pause_256?.p50,
    150,
  );
  le(
    'snapshot of a restored VM: cost follows changed memory, not RAM size',
    'snapshot_gen2_8g_total_0 / snapshot_gen2_total_0 (8 GiB vs 2 GiB, ~0 changed)',
    r['snapshot_gen2_8g_total_0/snapshot_gen2_total_0'],
    1.5,
  );
  le(
    '10 concurrent forks all answering ≤ 1 s',
    'fanout_10_all p50 (ms)',
    s.fanout_10_all?.p50,
    1000,
  );
  le(
    'host memory per idle fork ≤ 30 MiB',
    'fanout_mem_per_fork p50 (MiB, MemAvailable drop)',
    s.fanout_mem_per_fork?.p50,
    30,
  );
  le(
    'host memory per idle fork ≤ 30 MiB (PSS view)',
    'fanout_pss_per_fork p50 (MiB)',
    s.fanout_pss_per_fork?.p50,
    30,
  );
  le(
    'SDK round trip on one h2c session p50 ≤ 50 ms: run(vm, "true")',
    'api_sdk_run p50 (ms, FakeRuntime server)',
    s.api_sdk_run?.p50,
    50,
  );
  le(
    'SDK round trip on one h2c session p50 ≤ 50 ms: get(vm)',
    'api_sdk_get p50 (ms, FakeRuntime server)',
    s.api_sdk_get?.p50,
    50,
  );
  le(
    'exec through the SDK adds ≤ 2 ms p50 to the agent exec (issue 19)',
    `exec_sdk_overhead p50 (ms, per call: SDK time less the runtime's exec time; p50 difference exec_sdk − exec_agent ${fmt(s.exec_sdk && s.exec_agent ? s.exec_sdk.p50 - s.exec_agent.p50 : undefined)})`,
    s.exec_sdk_overhead?.p50,
    2,
  );
  le(
    '`fastvm --version` starts in ≤ 120 ms (issue #13; node -e 0 took 62 ms there)',
    `cli_start p50 (ms; node_start ${fmt(s.node_start?.p50)}, ratio ${fmt(r['cli_start/node_start'])})`,
    s.cli_start?.p50,
    120,
  );
  le(
    '10 concurrent forks through the SDK, networking on ≤ 1.15× off (issue 23)',
    `fork10_net / fork10_net_off p50 (${fmt(s.fork10_net?.p50)} / ${fmt(s.fork10_net_off?.p50)} ms)`,
    r['fork10_net/fork10_net_off'],
    1.15,
  );
  le(
    'restore → first run through the SDK, networking on ≤ 1.10× off (issue 23)',
    `restore_run_net / restore_run_net_off p50 (${fmt(s.restore_run_net?.p50)} / ${fmt(s.restore_run_net_off?.p50)} ms)`,
    r['restore_run_net/restore_run_net_off'],
    1.1,
  );
  le(
    'warm-pool launch → first run through the API with networking p50 ≤ 30 ms (issue 23)',
    `launch_run_net p50 (ms; off: launch_run_net_off ${fmt(s.launch_run_net_off?.p50)})`,
    s.launch_run_net?.p50,
    30,
  );
  const ge = (target: string, measured: string, value: number | undefined, limit: number) =>
    t.push({
      target,
      measured,
      value: value ?? null,
      ok: value === undefined ? null : value >= limit,
    });
  ge(
    'service proxy ≥ 0.8× the direct path: 1 KiB, 32 keep-alive connections (issue 14)',
    `proxy_rps_ratio p50, per pair of adjacent windows (req/s p50s: ${fmt(s.proxy_rps?.p50)} / ${fmt(s.proxy_direct_rps?.p50)})`,
    s.proxy_rps_ratio?.p50,
    0.8,
  );
  le(
    'idle CPU per admitted c1m2 ≤ 0.15% of a core (issue 19)',
    `density_idle_cpu_per_vm (%; ${fmt(s.density_c1m2?.p50)} VMs admitted, ${fmt(s.density_mem_per_vm?.p50)} MiB each)`,
    s.density_idle_cpu_per_vm?.p50,
    0.15,
  );
  // Measured under h2load when it is installed (a Node load generator costs more CPU per
  // request than the server, and shares the two cores with it), else with the Node one.
  const h2cpu = s.api_h2load_server_cpu_per_req ?? s.api_h2_server_cpu_per_req;
  const h2rps = s.api_h2load_rps ?? s.api_h2_rps;
  const under = s.api_h2load_rps ? 'h2load' : 'Node load generator';
  le(
    'API: server CPU per GET /v1/vms/{id} over HTTP/2 ≤ 0.1 ms (issue 19)',
    `server CPU per request (ms, ${under}; bare node:http2 floor ${fmt(s.api_h2_floor_server_cpu_per_req?.p50)})`,
    h2cpu?.p50,
    0.1,
  );
  ge(
    'API: GET /v1/vms/{id} over 64 HTTP/2 streams ≥ 10,000 req/s (issue 19)',
    `req/s (${under}; bare node:http2 floor ${fmt(s.api_h2_floor_rps?.p50)})`,
    h2rps?.p50,
    10_000,
  );
  le(
    'API: server CPU per GET /v1/vms/{id} over HTTP/1.1 ≤ 0.1 ms (issue 19)',
    `server CPU per request (ms, h2load --h1, 64 connections; bare node:http floor ${fmt(s.api_h1_floor_server_cpu_per_req?.p50)})`,
    s.api_h1load_server_cpu_per_req?.p50,
    0.1,
  );
  ge(
    'API: GET /v1/vms/{id} over 64 HTTP/1.1 connections ≥ 10,000 req/s (issue 19)',
    `req/s (h2load --h1; bare node:http floor ${fmt(s.api_h1_floor_rps?.p50)})`,
    s.api_h1load_rps?.p50,
    10_000,
  );
  const f100 = s.fanout_100_idle;
  const f100Failed = errors.some((e) => e.startsWith('fanout_100_idle'));
  t.push({
    target: '100 concurrent idle c1m2 forks without failure',
    measured: 'fanout_100_idle: all 100 answered (ms)',
    value: f100?.p50 ?? null,
    ok: f100 ? true : f100Failed ? false : null,
  });
  return t;
}

// -------------------------------------------------------------------------------------------------

function fmt(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return String(round(v));
}

function rows(r: Report): string[][] {
  return Object.entries(r.scenarios).map(([name, s]) => [
    name,
    s.unit,
    fmt(s.p50),
    fmt(s.p90),
    fmt(s.max),
    String(s.samples),
    r.details[name]?.note ?? '',
  ]);
}

const HEAD = ['scenario', 'unit', 'p50', 'p90', 'max', 'n', 'what'];

function header(r: Report): string {
  return (
    `${r.date}  rev ${r.revision}  ${r.mode} run, ${r.durationS} s\n` +
    `machine: ${r.machine.cores} cores, ${r.machine.memMiB} MiB, ${r.machine.accel}, ${r.machine.cpu}, ` +
    `kernel ${r.machine.kernel}, QEMU ${r.machine.qemu}\n` +
    `host load (1/5/15 min) at start ${r.load.start.join(' ')}, at end ${r.load.end.join(' ')}; ` +
    `${r.load.otherQemuAtStart} other QEMU processes at start`
  );
}

export function printReport(r: Report): void {
  const body = rows(r).map((row) => row.slice(0, 6));
  const head = HEAD.slice(0, 6);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 || i === 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ');
  console.log('\n' + header(r) + '\n');
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of body) console.log(line(row));
  console.log('\nratios (p50 / p50, same run):');
  for (const [k, v] of Object.entries(r.ratios)) console.log(`  ${k.padEnd(52)} ${v}`);
  for (const [k, v] of Object.entries(r.derived)) console.log(`  ${k.padEnd(52)} ${v}`);
  console.log('\ntargets:');
  for (const t of r.targets) {
    const mark = t.ok === null ? '  ?' : t.ok ? ' ok' : 'MISS';
    console.log(`  ${mark.padStart(4)}  ${t.target}: ${t.measured} = ${fmt(t.value)}`);
  }
  if (r.errors.length) {
    console.log('\nerrors:');
    for (const e of r.errors) console.log(`  ${e.split('\n')[0]}`);
  }
}

export function toMarkdown(r: Report): string {
  const md: string[] = [];
  md.push(`# FastVM benchmark (${r.mode})`, '');
  md.push(
    ...header(r)
      .split('\n')
      .map((l) => `- ${l}`),
    '',
  );
  md.push(
    `| ${HEAD.join(' | ')} |`,
    `|${HEAD.map((_, i) => (i < 2 || i === 6 ? '---' : '---:')).join('|')}|`,
  );
  for (const row of rows(r)) md.push(`| ${row.map((c) => c.replaceAll('|', '\\|')).join(' | ')} |`);
  md.push('', '## Ratios (p50 / p50, measured in the same run)', '');
  md.push('| ratio | value |', '|---|---:|');
  for (const [k, v] of Object.entries(r.ratios)) md.push(`| ${k} | ${v} |`);
  for (const [k, v] of Object.entries(r.derived)) md.push(`| ${k} | ${v} |`);
  md.push('', '## Targets', '');
  md.push('| target | measured | value | ok |', '|---|---|---:|---|');
  for (const t of r.targets) {
    md.push(
      `| ${t.target} | ${t.measured} | ${fmt(t.value)} | ${t.ok === null ? '?' : t.ok ? 'yes' : '**no**'} |`,
    );
  }
  if (Object.keys(r.phases).length) {
    md.push('', '## Where the time goes (runtime-logged phases, p50 ms)', '');
    for (const [name, ph] of Object.entries(r.phases)) {
      md.push(
        `- ${name}: ${Object.entries(ph)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
      );
    }
  }
  if (r.info.length) md.push('', '## Notes', '', ...r.info.map((i) => `- ${i}`));
  if (r.errors.length) {
    md.push('', '## Errors', '', ...r.errors.map((e) => `- ${e.split('\n')[0]}`));
  }
  return md.join('\n') + '\n';
}

export function writeReport(r: Report, dir: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const json = path.join(dir, 'latest.json');
  const md = path.join(dir, 'latest.md');
  fs.writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
  fs.writeFileSync(md, toMarkdown(r));
  return [json, md];
}
