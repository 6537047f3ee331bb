/**
 * Queries compiled once: hot lookups (a VM by id, an API key by hash) are built with Kysely like
 * every other query, but their SQL and parameter order are computed on first use and reused, so
 * a request pays for running the statement, not for building and compiling it again.
 * @module
 */
import { CompiledQuery, type Compilable, type Kysely } from 'kysely';

/** A placeholder value no caller can pass: it marks where argument `i` goes. */
const marker = (i: number): string => `\u0000fastvm-prepared-${i}\u0000`;

/**
 * Wraps `build` (which receives one value per argument and returns a query) as a function that
 * runs the same SQL with new arguments. Values that `build` puts in the query itself stay
 * constant. Build must use each argument as a query parameter (not in identifiers or SQL text).
 */
export function prepared<DB, Args extends string[], Row>(
  db: Kysely<DB>,
  arity: Args['length'],
  build: (...args: Args) => Compilable<Row>,
): (...args: Args) => Promise<Row[]> {
  let plan: { sql: string; slots: Array<{ arg: number } | { value: unknown }> } | undefined;
  return async (...args: Args) => {
    if (!plan) {
      const markers = Array.from({ length: arity }, (_, i) => marker(i)) as Args;
      const compiled = build(...markers).compile();
      const slots = compiled.parameters.map((p) => {
        const arg = typeof p === 'string' ? markers.indexOf(p) : -1;
        return arg >= 0 ? { arg } : { value: p };
      });
      const used = new Set(slots.flatMap((s) => ('arg' in s ? [s.arg] : [])));
      if (used.size !== arity)
        throw new Error(`prepared query uses ${used.size} of ${arity} arguments`);
      plan = { sql: compiled.sql, slots };
    }
    const parameters = plan.slots.map((s) => ('arg' in s ? args[s.arg] : s.value));
    const result = await db.executeQuery<Row>(CompiledQuery.raw(plan.sql, parameters));
    return result.rows;
  };
}
