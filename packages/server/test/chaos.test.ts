/**
 * Five rounds of the chaos suite (`npm run chaos` runs fifty): real VMs through the API, kill -9
 * of the server at random points, restart, and every invariant checked (see chaos/engine.ts).
 */
import { expect, it } from 'vitest';
import { runChaos, summary } from '../../../chaos/engine.js';

it('kill -9 at random points loses nothing and leaves nothing stuck or behind (5 rounds)', async () => {
  const report = await runChaos({
    rounds: 5,
    log: (line) => process.env.DEBUG && console.log(line),
  });
  console.log(`chaos (seed ${report.seed}): ${summary(report)}`);
  // As one string: a failure shows every finding (and the seed, to replay it with --seed).
  expect(report.findings.join('\n'), `seed ${report.seed}`).toBe('');
  expect(report.kills).toBe(5);
}, 900_000);
