// Vitest globalSetup: brings the built SDK and CLI (packages/*/dist) up to date before any test
// runs, for the tests that start the `fastvm` bin or pack the packages. A no-op when nothing
// changed since the last build (scripts/build.mjs --if-stale).
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export default function setup(): void {
  execFileSync(process.execPath, [path.join(import.meta.dirname, 'build.mjs'), '--if-stale'], {
    stdio: 'inherit',
  });
}
