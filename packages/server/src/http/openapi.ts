/**
 * Generates the OpenAPI 3.1 document served at `/openapi.json` from the registered routes'
 * zod schemas. Schemas carrying a zod `meta({ id })` become shared components.
 * @module
 */
import { z } from 'zod';

/** What the `onRoute` hook records about each route. */
export interface RouteDoc {
  method: string | string[];
  url: string;
  schema?: {
    body?: unknown;
    querystring?: unknown;
    params?: unknown;
    response?: Record<string, unknown>;
  };
  config?: { summary?: string; operationId?: string; tags?: string[]; public?: boolean };
}

type JsonSchema = Record<string, unknown>;

const STATUS_TEXT: Record<string, string> = {
  '200': 'OK',
  '201': 'Created',
  '202': 'Accepted',
  '204': 'No Content',
  default: 'Error',
};

/** The OpenAPI 3.1 document for `routes`. */
export function buildOpenApi(routes: readonly RouteDoc[]): Record<string, unknown> {
  const components: Record<string, JsonSchema> = {};

  const convert = (schema: unknown, io: 'input' | 'output'): JsonSchema | undefined => {
    if (!(schema instanceof z.ZodType)) return undefined;
    const json = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as JsonSchema;
    delete json.$schema;
    const defs = (json.$defs ?? {}) as Record<string, JsonSchema>;
    delete json.$defs;
    for (const [name, def] of Object.entries(defs))
      components[name] ??= rewriteRefs(def) as JsonSchema;
    // A top-level schema with an id becomes a component referenced by the operation.
    const id = z.globalRegistry.get(schema)?.id;
    const body = rewriteRefs(json) as JsonSchema;
    if (typeof id === 'string') {
      components[id] ??= body;
      return { $ref: `#/components/schemas/${id}` };
    }
    return body;
  };

  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map((m) =>
      m.toLowerCase(),
    );
    const path = route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    const op: Record<string, unknown> = {};
    if (route.config?.summary) op.summary = route.config.summary;
    if (route.config?.operationId) op.operationId = route.config.operationId;
    if (route.config?.tags) op.tags = route.config.tags;
    op.security = route.config?.public ? [] : [{ apiKey: [] }, { bearer: [] }];

    const parameters: unknown[] = [];
    for (const [where, schema] of [
      ['path', route.schema?.params],
      ['query', route.schema?.querystring],
    ] as const) {
      const json = convert(schema, 'input');
      const props = (json?.properties ?? {}) as Record<string, JsonSchema>;
      const required = new Set((json?.required as string[] | undefined) ?? []);
      for (const [name, s] of Object.entries(props)) {
        parameters.push({
          name,
          in: where,
          required: where === 'path' || required.has(name),
          schema: s,
          ...(typeof s.description === 'string' ? { description: s.description } : {}),
        });
      }
      if (where === 'query' && typeof json?.description === 'string') {
        op.description = json.description;
      }
    }
    if (parameters.length > 0) op.parameters = parameters;

    const body = convert(route.schema?.body, 'input');
    if (body) {
      op.requestBody = { required: false, content: { 'application/json': { schema: body } } };
    }

    const responses: Record<string, unknown> = {};
    for (const [code, schema] of Object.entries(route.schema?.response ?? {})) {
      const json = convert(schema, 'output');
      responses[code] = {
        description: STATUS_TEXT[code] ?? code,
        ...(json ? { content: { 'application/json': { schema: json } } } : {}),
      };
    }
    if (Object.keys(responses).length === 0) responses['200'] = { description: 'OK' };
    op.responses = responses;

    for (const m of methods) (paths[path] ??= {})[m] = op;
  }

  return {
    openapi: '3.1.0',
    info: {
      title: 'FastVM API',
      version: '1.0.0',
      description:
        'Self-hosted FastVM v1 API. Errors are {"error": <message>, "code": <stable code>, ...}.',
    },
    paths: Object.fromEntries(Object.entries(paths).sort(([a], [b]) => a.localeCompare(b))),
    components: {
      schemas: Object.fromEntries(
        Object.entries(components).sort(([a], [b]) => a.localeCompare(b)),
      ),
      securitySchemes: {
        apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        bearer: { type: 'http', scheme: 'bearer' },
      },
    },
  };
}

/** Points `$defs` refs at components and drops zod's implicit safe-integer bounds. */
function rewriteRefs(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(rewriteRefs);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (k === 'minimum' && v === Number.MIN_SAFE_INTEGER) continue;
      if (k === 'maximum' && v === Number.MAX_SAFE_INTEGER) continue;
      out[k] =
        k === '$ref' && typeof v === 'string'
          ? v.replace(/^#\/\$defs\//, '#/components/schemas/')
          : rewriteRefs(v);
    }
    return out;
  }
  return value;
}
