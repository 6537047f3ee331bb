/** A console WebSocket client for tests: collects output, waits for patterns and the close. */
import WebSocket from 'ws';

export interface ConsoleClose {
  code: number;
  reason: string;
}

export class ConsoleClient {
  /** Output received so far, decoded as UTF-8. */
  text = '';
  /** Frame kinds received (true = binary). */
  readonly binary: boolean[] = [];
  readonly closed: Promise<ConsoleClose>;
  #waiters: Array<() => void> = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.binary.push(isBinary);
      this.text += data.toString('utf8');
      for (const w of this.#waiters.splice(0)) w();
    });
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        resolve({ code, reason: reason.toString() });
        for (const w of this.#waiters.splice(0)) w();
      });
    });
  }

  /** Connects; rejects with `Unexpected server response: <status>` when refused. */
  static open(url: string): Promise<ConsoleClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const client = new ConsoleClient(ws);
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
    });
  }

  /** Connects expecting a refusal; resolves with the HTTP status and JSON body. */
  static refused(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.once('open', () => {
        ws.close();
        reject(new Error('the WebSocket was accepted'));
      });
      ws.once('unexpected-response', (_req, res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : {} });
          ws.terminate();
        });
      });
      ws.once('error', () => {});
    });
  }

  /** Types text (a text frame, as the official Python CLI sends keystrokes). */
  type(text: string): void {
    this.ws.send(text);
  }

  /** Sends raw input bytes as a binary frame. */
  send(bytes: Uint8Array): void {
    this.ws.send(bytes, { binary: true });
  }

  resize(cols: number, rows: number): void {
    this.ws.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** Resolves with the match once `re` matches the output after offset `from`. */
  async waitFor(re: RegExp, from = 0, timeoutMs = 10_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    let closed = false;
    void this.closed.then(() => (closed = true));
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0 || closed) {
        throw new Error(`no ${re} in console output: ${JSON.stringify(this.text.slice(from))}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Types a command line and waits until `re` matches what follows. */
  async run(line: string, re: RegExp): Promise<RegExpExecArray> {
    const from = this.text.length;
    this.type(`${line}\r`);
    return this.waitFor(re, from);
  }

  close(): void {
    this.ws.close();
  }
}

/** The WebSocket URL for a console token response, built as the official CLI does (§5). */
export function consoleUrl(
  baseUrl: string,
  token: { token: string; websocketPath: string },
  extra = '',
): string {
  const path = token.websocketPath;
  const url = /^wss?:\/\//i.test(path)
    ? path
    : baseUrl.replace('https://', 'wss://').replace('http://', 'ws://').replace(/\/$/, '') +
      (path.startsWith('/') ? '' : '/') +
      path;
  return `${url}${url.includes('?') ? '&' : '?'}session=${token.token}${extra}`;
}
