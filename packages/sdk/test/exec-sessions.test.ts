// execDetached(), attach(), listExecs(), getExec() and killExec() against the real API server
// with the FakeRuntime (issue 18, part 5). Real VMs: packages/server/test/exec-sessions-vm.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FastVM, NotFoundError, type ExecEvent, type VM } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

const FIVE =
  'echo 1; sleep 0.2; echo 2; sleep 0.2; echo 3; sleep 0.2; echo 4; sleep 0.2; echo 5; exit 7';

let server: TestServer;
let client: FastVM;
let vm: VM;

beforeAll(async () => {
  server = await startTestServer({ launchWaitMs: 50 });
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
  vm = await client.launch({ name: 'sdk-execs' });
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

async function collect(events: AsyncIterable<ExecEvent>): Promise<ExecEvent[]> {
  const out: ExecEvent[] = [];
  for await (const ev of events) out.push(ev);
  return out;
}

const text = (events: ExecEvent[]) =>
  events.map((e) => (e.type === 'exit' ? '' : e.data.toString())).join('');

describe('exec sessions', () => {
  it('starts detached, attaches from 0 and from an offset, lists the exit', async () => {
    const session = await client.execDetached(vm, FIVE);
    expect(session).toMatchObject({ vmId: vm.id, status: 'running', keepAlive: true });
    expect(session.command).toEqual(['sh', '-c', FIVE]);

    const all = await collect(client.attach(vm, session.execId));
    expect(text(all)).toBe('1\n2\n3\n4\n5\n');
    expect(all.at(-1)).toMatchObject({ type: 'exit', exitCode: 7 });
    // Offsets count from the start and follow each other.
    let next = 0;
    for (const ev of all) {
      if (ev.type === 'exit') continue;
      expect(ev.offset).toBe(next);
      next += ev.data.length;
    }

    const tail = await collect(client.attach(vm.id, session.execId, { fromOffset: 4 }));
    expect(text(tail)).toBe('3\n4\n5\n');
    expect(tail[0]).toMatchObject({ type: 'stdout', offset: 4 });

    const listed = await client.listExecs(vm);
    expect(listed.find((s) => s.execId === session.execId)).toMatchObject({
      status: 'exited',
      exitCode: 7,
      stdoutBytes: 10,
      outputBytes: 10,
      truncatedBefore: 0,
      error: null,
    });
    expect((await client.getExec(vm, session.execId)).exitCode).toBe(7);
  });

  it('leaving an attach keeps the command; reattaching from the offset gets the rest', async () => {
    const { execId } = await client.execDetached(vm, FIVE);
    let resumeAt = 0;
    for await (const ev of client.attach(vm, execId)) {
      if (ev.type !== 'exit') resumeAt = (ev.offset ?? 0) + ev.data.length;
      if (resumeAt >= 4) break;
    }
    expect((await client.getExec(vm, execId)).status).toBe('running');
    const rest = await collect(client.attach(vm, execId, { fromOffset: resumeAt }));
    expect(text(rest)).toBe('1\n2\n3\n4\n5\n'.slice(resumeAt));
    expect(rest.at(-1)).toMatchObject({ type: 'exit', exitCode: 7 });
  });

  it('kills, and answers unknown ids with NotFoundError', async () => {
    const { execId } = await client.execDetached(vm, ['sleep', '30']);
    expect(await client.killExec(vm, execId)).toMatchObject({ status: 'killed', exitCode: null });
    await expect(client.getExec(vm, 'no-such-exec')).rejects.toBeInstanceOf(NotFoundError);
    await expect(collect(client.attach(vm, 'no-such-exec'))).rejects.toBeInstanceOf(NotFoundError);
  });
});
