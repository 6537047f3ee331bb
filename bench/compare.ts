/**
 * Compare two benchmark result files: `tsx bench/compare.ts before.json after.json`.
 *
 * Prints, per scenario, both p50s and the ratio after/before, marked better or worse by more
 * than the noise threshold (`--threshold 0.15` = 15 %, the default). For ms and MiB lower is
 * better; for req/s higher is better. Also compares the same-run ratios (`ratios`), which are the
 * figures to trust across machines and loads.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';

interface Scenario {
  unit: string;
  p50: number;
  p90: number;
  max: number;
  samples: number;
}
interface Result {
  date?: string;
  revision?: string;
  machine?: { cores?: number; memMiB?: number; accel?: string };
  scenarios: Record<string, Scenario>;
  ratios?: Record<string, number>;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { threshold: { type: 'string', default: '0.15' } },
});
if (positionals.length !== 2) {
  console.error('usage: tsx bench/compare.ts [--threshold 0.15] before.json after.json');
  process.exit(2);
}
const threshold = Number(values.threshold);
const load = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8')) as Result;
const [a, b] = positionals.map(load) as [Result, Result];

const describe = (r: Result, f: string) =>
  `${f}: ${r.date ?? '?'} rev ${r.revision ?? '?'} (${r.machine?.cores ?? '?'} cores, ` +
  `${r.machine?.memMiB ?? '?'} MiB, ${r.machine?.accel ?? '?'})`;
console.log(`before ${describe(a, positionals[0]!)}`);
console.log(`after  ${describe(b, positionals[1]!)}`);
if (a.machine?.accel !== b.machine?.accel) console.log('warning: different accelerators');

const num = (v: number | undefined) => (v === undefined ? '–' : String(v));

function verdict(ratio: number, higherIsBetter: boolean): string {
  if (!Number.isFinite(ratio)) return '';
  const gain = higherIsBetter ? ratio : 1 / ratio;
  if (gain > 1 + threshold) return 'better';
  if (gain < 1 / (1 + threshold)) return 'WORSE';
  return '';
}

const rows: string[][] = [['scenario', 'unit', 'before p50', 'after p50', 'after/before', '']];
const names = [...new Set([...Object.keys(a.scenarios), ...Object.keys(b.scenarios)])];
for (const n of names) {
  const x = a.scenarios[n];
  const y = b.scenarios[n];
  const unit = (y ?? x)!.unit;
  const ratio = x && y && x.p50 !== 0 ? y.p50 / x.p50 : NaN;
  rows.push([
    n,
    unit,
    num(x?.p50),
    num(y?.p50),
    Number.isFinite(ratio) ? ratio.toFixed(2) : x ? 'gone' : 'new',
    verdict(ratio, unit === 'req/s' || unit === 'MiB/s'),
  ]);
}
const ratioNames = [...new Set([...Object.keys(a.ratios ?? {}), ...Object.keys(b.ratios ?? {})])];
if (ratioNames.length) {
  rows.push(['', '', '', '', '', '']);
  rows.push(['same-run ratio', '', 'before', 'after', 'after/before', '']);
  for (const n of ratioNames) {
    const x = a.ratios?.[n];
    const y = b.ratios?.[n];
    const r = x !== undefined && y !== undefined && x !== 0 ? y / x : NaN;
    rows.push([n, '', num(x), num(y), Number.isFinite(r) ? r.toFixed(2) : '–', '']);
  }
}
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
for (const r of rows) {
  console.log(r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
}
