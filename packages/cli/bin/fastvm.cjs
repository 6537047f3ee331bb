#!/usr/bin/env node
// The `fastvm` command: the CLI built into dist/ (scripts/build.mjs; in the repository `npm test`,
// `npm start` and `npm run build` build it). CommonJS, like the build, so that starting it does not
// start Node's ESM loader.
'use strict';
const process = require('node:process');

let cli;
try {
  cli = require('../dist/main.cjs');
} catch (err) {
  if (err?.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes('dist/main.cjs')) throw err;
  process.stderr.write('fastvm: the CLI is not built; run `npm run build` in the repository\n');
  process.exit(1);
}
cli.run(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
