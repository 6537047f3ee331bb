/**
 * The floor of `GET /v1/vms/{id}` (bench/h2load.ts): a bare `node:http2` server (or `node:http`
 * with `FASTVM_BENCH_PROTO=h1`), in its own process like the API server, answering every request
 * with `FASTVM_BENCH_BODY` and the API's headers — no routing, auth, store or metrics. Prints
 * `{"url"}` when listening.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';

const body = process.env.FASTVM_BENCH_BODY ?? '{}';
const length = Buffer.byteLength(body);
const answer = (_req: unknown, res: http.ServerResponse | http2.Http2ServerResponse): void => {
  res.writeHead(200, {
    'x-request-id': randomUUID(),
    'content-type': 'application/json; charset=utf-8',
    'content-length': length,
  });
  res.end(body);
};
const server =
  process.env.FASTVM_BENCH_PROTO === 'h1' ? http.createServer(answer) : http2.createServer(answer);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}` }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
