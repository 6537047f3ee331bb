/**
 * Zod as Fastify's schema language: a type provider (typed `request.body`/`params`/`query`), a
 * validator compiler that turns zod issues into 400 `bad_request` errors naming the field, and a
 * plain JSON serializer (response schemas document, they do not filter).
 * @module
 */
import type {
  FastifySchemaCompiler,
  FastifySerializerCompiler,
  FastifyTypeProvider,
} from 'fastify';
import { z } from 'zod';
import { ApiError } from '../errors.js';

/** Types request parts from their zod schemas. */
export interface ZodTypeProvider extends FastifyTypeProvider {
  validator: this['schema'] extends z.ZodType ? z.output<this['schema']> : unknown;
  serializer: this['schema'] extends z.ZodType ? z.input<this['schema']> : unknown;
}

/** `['firewall','ingress',0,'portStart']` → `firewall.ingress[0].portStart` */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out;
}

/** The 400 for a failed parse: first issue's message, prefixed with its field. */
export function zodToApiError(error: z.ZodError, part: string): ApiError {
  const issue = error.issues[0];
  const field = issue ? formatPath(issue.path) : '';
  const message = issue?.message ?? 'invalid request';
  if (part === 'body' && field === '' && issue?.code === 'invalid_type') {
    return new ApiError('bad_request', 'request body must be a JSON object', { field: 'body' });
  }
  return new ApiError(
    'bad_request',
    field ? `${field}: ${message}` : message,
    field ? { field } : { field: part },
  );
}

/** Validates request parts with their zod schema; failures become 400 `bad_request`. */
export const zodValidatorCompiler: FastifySchemaCompiler<z.ZodType> = ({ schema, httpPart }) => {
  return (data: unknown) => {
    // Body-less requests (Python sends Content-Type: application/json with no body) validate
    // as an empty object, so every body schema sees an object.
    const input = httpPart === 'body' && (data === undefined || data === null) ? {} : data;
    const result = schema.safeParse(input);
    if (result.success) return { value: result.data };
    return { error: zodToApiError(result.error, httpPart ?? 'request') };
  };
};

/** Serialises replies with `JSON.stringify` (response schemas only document). */
export const jsonSerializerCompiler: FastifySerializerCompiler<unknown> = () => {
  return (data: unknown) => JSON.stringify(data);
};
