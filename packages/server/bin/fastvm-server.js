#!/usr/bin/env node
// `fastvm-server` entry: runs the TypeScript source through tsx (the repository has no build step).
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
