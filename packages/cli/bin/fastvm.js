#!/usr/bin/env node
// Launcher: runs the TypeScript entry point through tsx, so the CLI works in the repository
// without a build step.
import process from 'node:process';
import { register } from 'tsx/esm/api';

register();
const { run } = await import('../src/main.ts');
process.exitCode = await run(process.argv.slice(2));
