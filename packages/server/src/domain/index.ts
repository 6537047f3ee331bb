/**
 * The server's domain: records and statuses (`model.ts`), the status transition tables
 * (`transitions.ts`) and the errors services throw (`errors.ts`, mapped to HTTP by
 * `http/error-mapping.ts`). Nothing here knows about Fastify or SQL.
 * @module
 */
export * from './model.js';
export * from './transitions.js';
export * from './errors.js';
export * from './published.js';
export * from './firewall.js';
export * from './builds.js';
