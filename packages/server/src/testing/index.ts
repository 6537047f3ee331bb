/**
 * Test doubles shipped with the server (`@fastvm/server/testing`).
 * @module
 */
export { FakeRuntime, FakeRuntimeError } from './fake-runtime.js';
export { FakePty } from './fake-pty.js';
export { vmRecord } from './records.js';
export type { FakeCall, FakeFailure, FakeRuntimeOptions } from './fake-runtime.js';
