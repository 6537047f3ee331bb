/**
 * The SSH gateway: an SSH server (the `ssh2` library) in the API process, so that
 * `ssh -p 2222 <vm id or name>@<host>` opens a shell or runs a command in a VM of the key owner's
 * org. Public keys only (`auth.ts`), host key in the data dir (`host-key.ts`), one `SshSession`
 * per session channel (`session.ts`). Port forwarding, X11 and agent forwarding are refused.
 * @module
 */
import type { Runtime } from '@fastvm/runtime';
import type { Logger } from 'pino';
import ssh2, { type Connection } from 'ssh2';
import type { Store } from '../store/index.js';
import { SshAuthenticator, type SshLogin } from './auth.js';
import { loadOrCreateHostKey } from './host-key.js';
import { DEFAULT_SSH_SESSION_SETTINGS, SshSession, type SshSessionSettings } from './session.js';

/** Authentication attempts one connection may make before it is dropped. */
const MAX_AUTH_ATTEMPTS = 20;
/** Time a connection has to authenticate. */
const AUTH_TIMEOUT_MS = 60_000;
/** Session channels open at once on one connection. */
const MAX_SESSIONS_PER_CONNECTION = 10;

export interface SshGatewayOptions {
  host: string;
  /** 0 = any free port. */
  port: number;
  /** Where the host key lives (`ssh_host_ed25519_key`). */
  dataDir: string;
  store: Store;
  runtime: Runtime;
  logger: Logger;
  settings?: Partial<SshSessionSettings>;
}

export interface SshGateway {
  host: string;
  port: number;
  /** The host key's `SHA256:` fingerprint. */
  hostKeyFingerprint: string;
  /** `ssh-ed25519 <base64>` (for a known_hosts line). */
  hostPublicKey: string;
  /** Stops listening and hangs up every session (their commands get SIGHUP). */
  close(): Promise<void>;
}

/** Starts the SSH gateway listener. */
export async function startSshGateway(opts: SshGatewayOptions): Promise<SshGateway> {
  const hostKey = await loadOrCreateHostKey(opts.dataDir);
  const log = opts.logger.child({ component: 'ssh' });
  if (hostKey.created) log.info({ fingerprint: hostKey.fingerprint }, 'ssh: generated host key');
  const auth = new SshAuthenticator(opts.store);
  const settings = { ...DEFAULT_SSH_SESSION_SETTINGS, ...opts.settings };
  const connections = new Set<Connection>();
  const sessions = new Set<SshSession>();

  const server = new ssh2.Server(
    { hostKeys: [hostKey.privateKey], ident: 'FastVM' },
    (client, info) => {
      connections.add(client);
      const remote = `${info.ip}:${info.port}`;
      let login: SshLogin | undefined;
      let attempts = 0;
      let open = 0;
      const authTimer = setTimeout(() => client.end(), AUTH_TIMEOUT_MS);
      authTimer.unref();

      client.on('authentication', (ctx) => {
        attempts += 1;
        if (attempts > MAX_AUTH_ATTEMPTS) {
          log.info({ remote }, 'ssh: too many authentication attempts');
          client.end();
          return;
        }
        if (ctx.method !== 'publickey') return ctx.reject(['publickey']);
        auth
          .check({
            username: ctx.username,
            algo: ctx.key.algo,
            data: ctx.key.data,
            signature: ctx.signature,
            blob: ctx.blob,
            hashAlgo: ctx.hashAlgo,
          })
          .then(
            (decision) => {
              if (!decision.ok) {
                // Signed attempts only: key queries are what every client sends for every key.
                if (ctx.signature) {
                  log.info(
                    {
                      remote,
                      fingerprint: decision.fingerprint,
                      orgId: decision.orgId,
                      why: decision.reason,
                    },
                    'ssh: login refused',
                  );
                }
                return ctx.reject(['publickey']);
              }
              if (decision.login) login = decision.login;
              ctx.accept();
            },
            (err: unknown) => {
              log.error({ err, remote }, 'ssh: authentication failed');
              ctx.reject(['publickey']);
            },
          );
      });

      client.on('ready', () => {
        clearTimeout(authTimer);
        if (!login) return client.end();
        const who = login;
        log.info(
          { remote, orgId: who.orgId, vmId: who.vmId, fingerprint: who.fingerprint },
          'ssh: logged in',
        );
        client.on('session', (accept, reject) => {
          if (open >= MAX_SESSIONS_PER_CONNECTION) return reject();
          open += 1;
          const session: SshSession = new SshSession(accept(), {
            store: opts.store,
            runtime: opts.runtime,
            logger: log,
            login: who,
            settings,
            onEnd: () => {
              open -= 1;
              sessions.delete(session);
            },
          });
          sessions.add(session);
        });
      });
      // Forwarding requests and other channel types get the library's automatic refusal.
      client.on('error', (err) => log.debug({ err, remote }, 'ssh: connection error'));
      client.on('close', () => {
        clearTimeout(authTimer);
        connections.delete(client);
      });
    },
  );

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err: Error) => log.error({ err }, 'ssh: listener error'));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  log.info({ host: opts.host, port, fingerprint: hostKey.fingerprint }, 'SSH gateway listening');

  let closing: Promise<void> | undefined;
  return {
    host: opts.host,
    port,
    hostKeyFingerprint: hostKey.fingerprint,
    hostPublicKey: hostKey.publicKey,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sessions) s.hangUp('server shutting down');
        for (const c of connections) c.end();
      });
      return closing;
    },
  };
}
