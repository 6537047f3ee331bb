/**
 * `npm run chaos [-- --rounds N] [--seed S] [--keep]`: the chaos suite (see `engine.ts`), 50 rounds by
 * default. Prints one line per round and the counts; exits 1 when any bad count is not zero.
 */
import { parseArgs } from 'node:util';
import { runChaos, summary } from './engine.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '50' },
    seed: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const report = await runChaos({
  rounds: Number(values.rounds),
  ...(values.seed ? { seed: Number(values.seed) } : {}),
  keep: values.keep,
  log: (line) => console.log(line),
});
console.log(
  `\nchaos (seed ${report.seed}, ${report.operations} operations, ${report.seconds.toFixed(0)} s): ${summary(report)}`,
);
console.log(
  `recovery after the kills: ${Object.entries(report.recovered)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}`,
);
for (const f of report.findings) console.log(`  ${f}`);
process.exit(report.findings.length ? 1 : 0);
