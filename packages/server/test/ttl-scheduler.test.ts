/**
 * The TTL scheduler hears of VM changes through `VmEvents` (it is built after the services and
 * subscribes; nothing is patched into the services after construction).
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { VmRecord } from '../src/domain/index.js';
import { TtlScheduler } from '../src/services/ttl.js';
import { VmEvents } from '../src/services/vm-events.js';
import { vmRecord } from '../src/testing/index.js';

function vm(over: Partial<VmRecord>): VmRecord {
  return vmRecord({ id: 'vm-1', orgId: 'org-1', status: 'running', ...over });
}

describe('TtlScheduler and VmEvents', () => {
  it('arms and disarms from published changes, fires once, and stops listening on stop()', async () => {
    const events = new VmEvents();
    const fired: string[] = [];
    const ttl = new TtlScheduler({
      events,
      onExpire: async (orgId, vmId) => {
        fired.push(`${orgId}/${vmId}`);
      },
      logger: pino({ level: 'silent' }),
    });
    const ttlOf = { seconds: 1, action: 'pause' as const };
    const far = Date.now() + 60_000;
    events.changed(vm({ ttl: ttlOf, expiresAtMs: far }));
    expect(ttl.dueAt('vm-1')).toBe(far);
    events.changed(vm({ status: 'pausing', ttl: ttlOf, expiresAtMs: null }));
    expect(ttl.dueAt('vm-1')).toBeUndefined();
    events.changed(vm({ ttl: ttlOf, expiresAtMs: Date.now() + 20 }));
    await new Promise((r) => setTimeout(r, 100));
    expect(fired).toEqual(['org-1/vm-1']);
    await ttl.stop();
    events.changed(vm({ id: 'vm-2', ttl: ttlOf, expiresAtMs: far }));
    expect(ttl.dueAt('vm-2')).toBeUndefined();
  });

  it('keeps telling other listeners when one throws', () => {
    const events = new VmEvents(pino({ level: 'silent' }));
    const seen: string[] = [];
    events.subscribe(() => {
      throw new Error('boom');
    });
    const off = events.subscribe((v) => seen.push(v.id));
    events.changed(vm({}));
    off();
    events.changed(vm({ id: 'vm-2' }));
    expect(seen).toEqual(['vm-1']);
  });
});
