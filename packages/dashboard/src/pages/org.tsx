/**
 * Org: quota usage as gauges; builds, snapshot imports and volumes as live lists where the server
 * has them (a 404 or 501 from their list endpoint hides the section).
 * @module
 */
import { type Item, optionalList, quotas } from '../api.js';
import { Gauge } from '../components/gauge.js';
import { ErrorText, Spinner, StatusBadge, usePoll } from '../ui.js';

export function OrgPage() {
  const q = usePoll(() => quotas(), 5000);
  return (
    <section aria-labelledby="org-title">
      <h1 id="org-title">Org</h1>
      <section class="card" aria-labelledby="quota-title">
        <h2 id="quota-title">Quotas</h2>
        <ErrorText error={q.error} />
        {q.data ? (
          <div class="gauges">
            <Gauge label="vCPUs" used={q.data.usage.vcpu} limit={q.data.limits.vcpu} />
            <Gauge
              label="Memory"
              used={q.data.usage.memoryMiB}
              limit={q.data.limits.memoryMiB}
              unit="MiB"
            />
            <Gauge
              label="Disk"
              used={q.data.usage.diskGiB}
              limit={q.data.limits.diskGiB}
              unit="GiB"
            />
            <Gauge
              label="Snapshots"
              used={q.data.usage.snapshotCount}
              limit={q.data.limits.snapshotCount}
            />
            {q.data.limits.volumeCount > 0 ? (
              <Gauge
                label="Volumes"
                used={q.data.usage.volumeCount}
                limit={q.data.limits.volumeCount}
              />
            ) : null}
            {q.data.limits.volumeGiB > 0 ? (
              <Gauge
                label="Volume storage"
                used={q.data.usage.volumeGiB}
                limit={q.data.limits.volumeGiB}
                unit="GiB"
              />
            ) : null}
          </div>
        ) : q.error ? null : (
          <Spinner label="Loading quotas…" />
        )}
        {q.data ? <p class="muted small mono">org {q.data.orgId}</p> : null}
      </section>
      <OptionalSection title="Builds" path="/v1/builds" />
      <OptionalSection title="Snapshot imports" path="/v1/snapshot-imports" />
      <OptionalSection title="Volumes" path="/v1/volumes" />
    </section>
  );
}

const str = (v: unknown): string | undefined =>
  typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined;

/** A progress fraction from whichever field the item carries (0..1 or a percentage). */
function progress(item: Item): number | undefined {
  for (const key of ['progress', 'percent', 'progressPercent']) {
    const v = item[key];
    if (typeof v === 'number') return v > 1 ? v / 100 : v;
  }
  return undefined;
}

function logText(item: Item): string | undefined {
  for (const key of ['logs', 'log', 'logTail', 'output']) {
    const v = item[key];
    if (typeof v === 'string' && v !== '') return v;
    if (Array.isArray(v) && v.length > 0) return v.map(String).join('\n');
  }
  return undefined;
}

/** A list the server may not have: hidden entirely while its endpoint answers 404/501. */
function OptionalSection(props: { title: string; path: string }) {
  const list = usePoll(() => optionalList(props.path), 3000, [props.path]);
  if (list.loading && list.data === undefined) return null;
  if (list.data === null || (list.data === undefined && !list.error)) return null;
  const id = `sec-${props.path.replace(/\W/g, '')}`;
  return (
    <section class="card" aria-labelledby={id} data-section={props.path}>
      <h2 id={id}>{props.title}</h2>
      <ErrorText error={list.error} />
      {list.data && list.data.length === 0 ? <p class="muted">None.</p> : null}
      {list.data && list.data.length > 0 ? (
        <ul class="plain items">
          {list.data.map((item, i) => {
            const p = progress(item);
            const logs = logText(item);
            const status = str(item.status);
            return (
              <li key={str(item.id) ?? i}>
                <div class="row spread">
                  <span>
                    <strong>{str(item.name) ?? str(item.id) ?? `#${i + 1}`}</strong>{' '}
                    {status ? <StatusBadge status={status} /> : null}
                  </span>
                  <span class="muted small">{str(item.createdAt) ?? ''}</span>
                </div>
                {p !== undefined ? (
                  <progress max={1} value={p} aria-label={`${Math.round(p * 100)}%`} />
                ) : null}
                {str(item.sizeGiB) ? (
                  <span class="muted small">{str(item.sizeGiB)} GiB</span>
                ) : null}
                {logs ? (
                  <details>
                    <summary>Logs</summary>
                    <pre class="output">{logs}</pre>
                  </details>
                ) : null}
              </li>
            );
          })}
        </ul>
      ) : null}
    </section>
  );
}
