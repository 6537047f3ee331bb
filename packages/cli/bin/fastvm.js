#!/usr/bin/env node
// The `fastvm` command: the CLI built into dist/ (scripts/build.mjs; in the repository,
// `npm test`, `npm start` and `npm run build` build it).
import process from 'node:process';

let cli;
try {
  cli = await import('../dist/main.js');
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('dist/main.js'))
    throw err;
  process.stderr.write('fastvm: the CLI is not built; run `npm run build` in the repository\n');
  process.exit(1);
}
process.exitCode = await cli.run(process.argv.slice(2));
