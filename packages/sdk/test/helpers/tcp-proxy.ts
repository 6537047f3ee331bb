// A transparent TCP proxy that counts the connections clients open through it: a server-side
// view of how many connections (HTTP/2 sessions) a client used, whatever the protocol.
import * as net from 'node:net';

export class CountingProxy {
  connections = 0;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  url = '';

  constructor(readonly targetPort: number) {
    this.#server = net.createServer((client) => {
      this.connections++;
      const upstream = net.connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as net.AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
