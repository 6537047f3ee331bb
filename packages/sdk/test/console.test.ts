// FastVM.console against the real server (FakeRuntime's fake shell), and the SDK's own
// WebSocket client against the `ws` library's server (framing edge cases).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket as WsSocket } from 'ws';
import {
  AuthenticationError,
  ConflictError,
  ConnectionError,
  FastVM,
  NotFoundError,
  type ConsoleSession,
} from '../src/index.js';
import { consoleUrl } from '../src/console.js';
import { MiniWebSocket } from '../src/internal/websocket.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;

/** Collects a session's output; waits for a pattern after an offset. */
function screen(session: ConsoleSession): {
  text: () => string;
  waitFor: (re: RegExp, from?: number) => Promise<RegExpExecArray>;
} {
  let text = '';
  session.on('data', (c) => (text += c.toString('utf8')));
  return {
    text: () => text,
    async waitFor(re, from = 0) {
      const deadline = Date.now() + 5000;
      for (;;) {
        const m = re.exec(text.slice(from));
        if (m) return m;
        if (Date.now() > deadline || !session.open) {
          throw new Error(`no ${re} in ${JSON.stringify(text.slice(from))}`);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  };
}

beforeAll(async () => {
  server = await startTestServer();
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

describe('FastVM.console', () => {
  it('runs tty, stty size after a resize, and reports the exit status', async () => {
    const vm = await client.launch();
    const session = await client.console(vm, { cols: 100, rows: 30 });
    const s = screen(session);
    await s.waitFor(/fake\$ $/);
    let mark = s.text().length;
    session.write('tty\r');
    expect((await s.waitFor(/(\/dev\/pts\/\d+)\r\n/, mark))[1]).toBe('/dev/pts/0');
    mark = s.text().length;
    session.write('stty size\r');
    expect((await s.waitFor(/(\d+ \d+)\r\n/, mark))[1]).toBe('30 100');
    session.resize(120, 40);
    mark = s.text().length;
    session.write('stty size\r');
    expect((await s.waitFor(/(\d+ \d+)\r\n/, mark))[1]).toBe('40 120');
    session.write('exit 3\r');
    expect(await session.exited).toEqual({
      exitCode: 3,
      closeCode: 1000,
      reason: '{"type":"exit","exitCode":3}',
    });
    expect(session.open).toBe(false);
    session.write('ignored');
  });

  it('is async iterable until the shell exits', async () => {
    const vm = await client.launch();
    const session = await client.console(vm.id);
    session.write('echo one\r');
    session.write('exit 0\r');
    const chunks: Buffer[] = [];
    for await (const chunk of session) chunks.push(chunk);
    expect(Buffer.concat(chunks).toString()).toMatch(/one\r\n.*logout/s);
    expect((await session.exited).exitCode).toBe(0);
  });

  it('close() ends the session and hangs the shell up', async () => {
    const vm = await client.launch();
    const session = await client.console(vm);
    await screen(session).waitFor(/fake\$ $/);
    session.close();
    const exit = await session.exited;
    expect(exit).toMatchObject({ exitCode: null, closeCode: 1000 });
    const pty = server.runtime.ptys.get(vm.id)![0]!;
    await expect(pty.exited).resolves.toMatchObject({ exitCode: 129 });
  });

  it('maps refusals to API errors', async () => {
    await expect(client.console('no-such-vm')).rejects.toBeInstanceOf(NotFoundError);
    const vm = await client.launch();
    server.runtime.crash(vm.id);
    await new Promise((r) => setTimeout(r, 50));
    await expect(client.console(vm)).rejects.toBeInstanceOf(ConflictError);
  });
});

describe('the SDK WebSocket client', () => {
  let wss: WebSocketServer;
  let httpServer: http.Server;
  let url: string;
  /** What the next connection does. */
  let behave: (ws: WsSocket) => void = () => {};

  beforeAll(async () => {
    httpServer = http.createServer((req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'nope', code: 'unauthorized' }));
    });
    wss = new WebSocketServer({ noServer: true });
    httpServer.on('upgrade', (req, socket, head) => {
      if (req.url?.startsWith('/refuse')) {
        socket.end(
          'HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 33\r\n\r\n' +
            '{"error":"bad token","code":"x"} ',
        );
        return;
      }
      if (req.url?.startsWith('/bad-accept')) {
        socket.end(
          'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n' +
            'sec-websocket-accept: wrong\r\n\r\n',
        );
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => behave(ws));
    });
    await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
    url = `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    wss.close();
    await new Promise((r) => httpServer.close(r));
  });

  function connect(path = '/'): Promise<MiniWebSocket> {
    return MiniWebSocket.connect(url + path, { timeoutMs: 2000 });
  }

  function collect(ws: MiniWebSocket): {
    messages: Array<[string, boolean]>;
    closed: Promise<[number, string]>;
  } {
    const messages: Array<[string, boolean]> = [];
    const closed = new Promise<[number, string]>((resolve) =>
      ws.attach({
        message: (d, binary) => messages.push([d.toString(), binary]),
        close: (code, reason) => resolve([code, reason]),
      }),
    );
    return { messages, closed };
  }

  it('reassembles fragmented and large messages, answers pings, reports the close', async () => {
    let pongs = 0;
    behave = (ws) => {
      ws.on('pong', () => pongs++);
      ws.ping('hi');
      ws.send('hello ', { fin: false });
      ws.send('fragmented ', { fin: false });
      ws.send('world', { fin: true });
      ws.send(Buffer.alloc(70_000, 0x41)); // 64-bit length encoding needs > 65535
      ws.send('text frame', { binary: false });
      ws.on('message', (data, isBinary) => {
        ws.send(`echo:${isBinary ? 'b' : 't'}:${data.toString()}`);
        if (data.toString() === 'bye') ws.close(4000, 'done here');
      });
    };
    const ws = await connect();
    const { messages, closed } = collect(ws);
    ws.sendBinary(Buffer.from('x'.repeat(300))); // 16-bit length
    ws.sendText('bye');
    expect(await closed).toEqual([4000, 'done here']);
    expect(messages[0]).toEqual(['hello fragmented world', false]);
    expect(messages[1]![0]).toBe('A'.repeat(70_000));
    expect(messages[2]).toEqual(['text frame', false]);
    expect(messages[3]).toEqual([`echo:b:${'x'.repeat(300)}`, false]);
    expect(messages[4]).toEqual(['echo:t:bye', false]);
    expect(pongs).toBe(1);
  });

  it('closes cleanly from the client side', async () => {
    let serverSaw: number | undefined;
    behave = (ws) => ws.on('close', (code) => (serverSaw = code));
    const ws = await connect();
    const { closed } = collect(ws);
    ws.close(1000);
    expect((await closed)[0]).toBe(1000);
    await new Promise((r) => setTimeout(r, 20));
    expect(serverSaw).toBe(1000);
  });

  it('turns HTTP refusals into API errors and bad handshakes into ConnectionError', async () => {
    await expect(connect('/refuse')).rejects.toBeInstanceOf(AuthenticationError);
    await expect(connect('/bad-accept')).rejects.toBeInstanceOf(ConnectionError);
    await expect(
      MiniWebSocket.connect('ws://127.0.0.1:1/', { timeoutMs: 2000 }),
    ).rejects.toBeInstanceOf(ConnectionError);
  });

  it('builds console URLs as the official CLI does', () => {
    expect(consoleUrl('https://api.example.com/fastvm/', '/v1/vms/a/console/ws', 't')).toBe(
      'wss://api.example.com/fastvm/v1/vms/a/console/ws?session=t',
    );
    expect(consoleUrl('http://h:8080', 'v1/x?y=1', 't', { cols: 80, rows: 24 })).toBe(
      'ws://h:8080/v1/x?y=1&session=t&rows=24&cols=80',
    );
    expect(consoleUrl('http://h', 'wss://other/ws', 't')).toBe('wss://other/ws?session=t');
  });
});
