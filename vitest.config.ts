import { defineConfig } from 'vitest/config';

// VM tests boot real QEMU guests on a 2-core machine: files run one at a time.
export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'agent/test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    reporters: ['default'],
  },
});
