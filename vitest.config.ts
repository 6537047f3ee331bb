import { defaultServerConditions } from 'vite';
import { defineConfig } from 'vitest/config';

// VM tests boot real QEMU guests on a 2-core machine: files run one at a time.
export default defineConfig({
  // Workspace packages resolve to their TypeScript sources (the '@fastvm/source' export
  // condition), so tests never run a stale build; processes the tests spawn (the `fastvm` bin)
  // run the build, which globalSetup brings up to date first.
  ssr: { resolve: { conditions: ['@fastvm/source', ...defaultServerConditions] } },
  test: {
    globalSetup: ['scripts/vitest-build.ts'],
    include: ['packages/*/test/**/*.test.ts', 'agent/test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    reporters: ['default'],
  },
});
