/**
 * Prometheus metrics (`prom-client`, one registry per server). Counters and latency histograms
 * are fed by the services where the work happens (`observe`); the state gauges (VMs by status
 * and machine type, warm pool, quota use per org) are read from the store and the runtime at
 * each scrape, so they cannot drift. HTTP requests are counted by the app's `onResponse` hook
 * (`routes/metrics.ts`), labelled with the route pattern, never the raw URL.
 * @module
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { MACHINES, type MachineType, type QuotaValues } from '../domain/index.js';
import type { Store } from '../store/index.js';
import type { QuotaService } from './quota.js';

/** Operations counted and timed. */
export type MetricOperation = 'launch' | 'restore' | 'snapshot' | 'exec';

/** What the scrape-time gauges read. */
export interface MetricsSources {
  store: Store;
  quotas: QuotaService;
  /** The runtime; its warm pool is reported when it has one (`poolReady`). */
  runtime: object;
}

const LIVE_STATUSES = [
  'provisioning',
  'running',
  'pausing',
  'paused',
  'resuming',
  'stopped',
  'deleting',
  'error',
] as const;

const QUOTA_DIMENSIONS = ['vcpu', 'memoryMiB', 'diskGiB', 'snapshotCount'] as const;

/** See the module comment. */
export class Metrics {
  readonly registry = new Registry();
  readonly #operations: Counter<'operation' | 'outcome'>;
  readonly #durations: Histogram<'operation'>;
  readonly #requests: Counter<'method' | 'route' | 'status'>;
  readonly #requestSeries = new Map<string, (seconds: number) => void>();
  readonly #requestDurations: Histogram<'method' | 'route'>;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    this.#operations = new Counter({
      name: 'fastvm_operations_total',
      help: 'Launches, restores, snapshots and execs, by outcome (ok or error).',
      labelNames: ['operation', 'outcome'],
      registers,
    });
    this.#durations = new Histogram({
      name: 'fastvm_operation_duration_seconds',
      help: 'Time the runtime took for a launch, restore, snapshot or exec.',
      labelNames: ['operation'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.#requests = new Counter({
      name: 'fastvm_http_requests_total',
      help: 'API requests by method, route pattern and status.',
      labelNames: ['method', 'route', 'status'],
      registers,
    });
    this.#requestDurations = new Histogram({
      name: 'fastvm_http_request_duration_seconds',
      help: 'API request time by method and route pattern.',
      labelNames: ['method', 'route'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers,
    });
    new Gauge({
      name: 'fastvm_vms',
      help: 'VMs by status and machine type.',
      labelNames: ['status', 'machine'],
      registers,
      async collect() {
        this.reset();
        const vms = await sources.store.listVmsByStatus(LIVE_STATUSES);
        for (const vm of vms) this.inc({ status: vm.status, machine: vm.machine });
      },
    });
    const runtime = sources.runtime as { poolReady?: (m: MachineType) => number };
    if (typeof runtime.poolReady === 'function') {
      const poolReady = runtime.poolReady.bind(runtime);
      new Gauge({
        name: 'fastvm_pool_ready',
        help: 'Warm VMs waiting in the pool, by machine type.',
        labelNames: ['machine'],
        registers,
        collect() {
          for (const machine of Object.keys(MACHINES) as MachineType[]) {
            this.set({ machine }, poolReady(machine));
          }
        },
      });
    }
    // Both quota gauges are collected from one read per scrape (the registry collects in parallel).
    let reading: Promise<{ org: string; limits: QuotaValues; usage: QuotaValues }[]> | undefined;
    const readQuotas = () =>
      (reading ??= (async () => {
        const orgs = await sources.store.listOrgs();
        return Promise.all(
          orgs.map(async (org) => ({ org: org.id, ...(await sources.quotas.get(org.id)) })),
        );
      })().finally(() => {
        reading = undefined;
      }));
    for (const [which, help] of [
      ['usage', "An org's quota use, by dimension."],
      ['limit', "An org's quota limit, by dimension."],
    ] as const) {
      new Gauge({
        name: `fastvm_quota_${which}`,
        help,
        labelNames: ['org', 'dimension'],
        registers,
        async collect() {
          const rows = await readQuotas();
          this.reset();
          for (const row of rows) {
            const values = which === 'usage' ? row.usage : row.limits;
            for (const dimension of QUOTA_DIMENSIONS) {
              this.set({ org: row.org, dimension }, values[dimension]);
            }
          }
        },
      });
    }
  }

  /** Records one `operation` that began at `startedMs` (epoch ms) and ended now. */
  observe(operation: MetricOperation, startedMs: number, ok: boolean): void {
    this.#operations.inc({ operation, outcome: ok ? 'ok' : 'error' });
    this.#durations.observe({ operation }, (Date.now() - startedMs) / 1000);
  }

  /** Records one API request (`route`: the route pattern, or `unmatched`). */
  request(method: string, route: string, status: number, seconds: number): void {
    this.#series(method, route, status)(seconds);
  }

  /** `request` with its labels bound once, for a caller that records the same series often. */
  requestRecorder(method: string, route: string, status: number): (seconds: number) => void {
    return this.#series(method, route, status);
  }

  #series(method: string, route: string, status: number): (seconds: number) => void {
    // prom-client hashes a label object on every call; its per-label-set children do not.
    const key = `${method} ${route} ${status}`;
    let record = this.#requestSeries.get(key);
    if (!record) {
      const count = this.#requests.labels(method, route, String(status));
      const duration = this.#requestDurations.labels(method, route);
      record = (seconds) => {
        count.inc();
        duration.observe(seconds);
      };
      this.#requestSeries.set(key, record);
    }
    return record;
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }
}
