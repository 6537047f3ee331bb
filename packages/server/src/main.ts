/**
 * Process entry: `tsx packages/server/src/main.ts <command>` (see `cli.ts` for the commands).
 * @module
 */
import { runCli } from './cli.js';

// Exit explicitly: after a graceful `serve` shutdown nothing else should keep the process up.
runCli(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
