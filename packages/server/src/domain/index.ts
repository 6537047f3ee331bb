/**
 * The server's domain: records and statuses (`model.ts`) and the status transition tables
 * (`transitions.ts`). Nothing here knows about Fastify or SQL.
 * @module
 */
export * from './model.js';
export * from './transitions.js';
