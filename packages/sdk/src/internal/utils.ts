import { AbortError } from '../core/errors.js';

/** Resolves after `ms`, or rejects with an AbortError when the signal fires first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted)
    return Promise.reject(new AbortError('the request was aborted', { cause: signal.reason }));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new AbortError('the request was aborted', { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Reads an environment variable, treating an empty value as unset. */
export function readEnv(name: string): string | undefined {
  const v = typeof process === 'undefined' ? undefined : process.env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

/**
 * Delay requested by the server, in ms: `retry-after-ms` (milliseconds), else `retry-after`
 * (seconds or an HTTP date). Values outside 0..60 s are ignored.
 */
export function retryAfterMs(headers: Record<string, string>): number | undefined {
  let ms: number | undefined;
  const rams = headers['retry-after-ms'];
  if (rams !== undefined && Number.isFinite(Number.parseFloat(rams))) ms = Number.parseFloat(rams);
  const ra = headers['retry-after'];
  if (ms === undefined && ra !== undefined) {
    const secs = Number(ra);
    if (ra.trim() !== '' && Number.isFinite(secs)) ms = secs * 1000;
    else {
      const at = Date.parse(ra);
      if (Number.isFinite(at)) ms = at - Date.now();
    }
  }
  return ms !== undefined && ms >= 0 && ms <= 60_000 ? ms : undefined;
}

/** Exponential backoff with jitter: min(0.5 s × 2^n, 8 s) × (1 − U[0, 0.25]). */
export function backoffMs(retriesTaken: number): number {
  return Math.min(500 * 2 ** retriesTaken, 8_000) * (1 - Math.random() * 0.25);
}
