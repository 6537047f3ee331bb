/**
 * The server's logger: readable lines at a terminal (`pino-pretty`: time, level, message, then
 * the fields), one JSON object per line otherwise (files, journald, log shippers).
 * `FASTVM_LOG_FORMAT=pretty|json` overrides the choice. Every request's lines carry its `reqId`,
 * the id sent back as `x-request-id` and as `requestId` in error bodies (see `http/request-id.ts`).
 * @module
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type LogFormat = 'pretty' | 'json';

/** The format for an output: `FASTVM_LOG_FORMAT` when set, else pretty on a TTY. */
export function logFormat(
  isTty: boolean = process.stdout.isTTY === true,
  env: Record<string, string | undefined> = process.env,
): LogFormat {
  const forced = env.FASTVM_LOG_FORMAT?.trim().toLowerCase();
  if (forced === 'pretty' || forced === 'json') return forced;
  if (forced) throw new Error(`FASTVM_LOG_FORMAT must be pretty or json, got ${forced}`);
  return isTty ? 'pretty' : 'json';
}

/** A logger writing to `stream` (stdout) in `format`. */
export function createLogger(
  level: string,
  format: LogFormat = logFormat(),
  stream: NodeJS.WritableStream = process.stdout,
): Logger {
  if (format === 'json') return pino({ level }, stream);
  return pino(
    { level },
    pretty({
      destination: stream,
      colorize: stream === process.stdout && process.stdout.isTTY === true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      // Synchronous, like pino's default destination: nothing is lost when the process exits.
      sync: true,
    }),
  );
}
