import { useState } from 'preact/hooks';
import { type FirewallPolicy, type FirewallRule, type Vm, setFirewall } from '../api.js';
import { type RuleRow, parseRule, toRow } from '../firewall-rules.js';
import { ErrorText, Spinner } from '../ui.js';

/** The VM's inbound (public IPv6) firewall: mode and a rules table, checked before saving. */
export function FirewallEditor(props: { vm: Vm; onSaved: (vm: Vm) => void }) {
  const [mode, setMode] = useState<FirewallPolicy['mode']>(props.vm.firewall.mode);
  const [rows, setRows] = useState<RuleRow[]>(props.vm.firewall.ingress.map(toRow));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const [saved, setSaved] = useState(false);
  const problems = rows.map(parseRule).map((r) => (typeof r === 'string' ? r : undefined));
  // Functional updates: two input events before a render must not undo each other.
  const update = (i: number, patch: Partial<RuleRow>) =>
    setRows((now) => now.map((r, j) => (j === i ? { ...r, ...patch } : r)));
  const auto = props.vm.effectiveFirewall.ingress.filter((r) =>
    (r.description ?? '').startsWith('auto:'),
  );

  return (
    <section class="card" aria-labelledby="fw-title">
      <h2 id="fw-title">Firewall</h2>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          if (problems.some(Boolean)) return;
          setBusy(true);
          setError(undefined);
          setSaved(false);
          try {
            const ingress = rows.map(parseRule) as FirewallRule[];
            props.onSaved(await setFirewall(props.vm.id, { mode, ingress }));
            setSaved(true);
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label class="fw-mode">
          Inbound
          <select
            value={mode}
            onChange={(e) => setMode(e.currentTarget.value as FirewallPolicy['mode'])}
          >
            <option value="restricted">restricted: only the rules below</option>
            <option value="open">open: everything</option>
          </select>
        </label>
        <div class="table-wrap">
          <table class="rules">
            <thead>
              <tr>
                <th scope="col">Protocol</th>
                <th scope="col">Ports</th>
                <th scope="col">Sources (IPv6 CIDRs, empty = any)</th>
                <th scope="col">Description</th>
                <th scope="col">
                  <span class="visually-hidden">Remove</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row, i) => (
                <tr key={i}>
                  <td>
                    <select
                      aria-label={`Rule ${i + 1} protocol`}
                      value={row.protocol}
                      onChange={(e) =>
                        update(i, { protocol: e.currentTarget.value as 'tcp' | 'udp' })
                      }
                    >
                      <option value="tcp">tcp</option>
                      <option value="udp">udp</option>
                    </select>
                  </td>
                  <td>
                    <input
                      aria-label={`Rule ${i + 1} ports`}
                      aria-invalid={problems[i]?.startsWith('ports') ? true : undefined}
                      value={row.ports}
                      size={11}
                      onInput={(e) => update(i, { ports: e.currentTarget.value })}
                    />
                  </td>
                  <td>
                    <input
                      aria-label={`Rule ${i + 1} sources`}
                      aria-invalid={problems[i]?.startsWith('sources') ? true : undefined}
                      value={row.sources}
                      onInput={(e) => update(i, { sources: e.currentTarget.value })}
                    />
                  </td>
                  <td>
                    <input
                      aria-label={`Rule ${i + 1} description`}
                      value={row.description}
                      onInput={(e) => update(i, { description: e.currentTarget.value })}
                    />
                  </td>
                  <td>
                    <button
                      type="button"
                      aria-label={`Remove rule ${i + 1}`}
                      onClick={() => setRows((now) => now.filter((_, j) => j !== i))}
                    >
                      ✕
                    </button>
                  </td>
                </tr>
              ))}
              {auto.map((r, i) => (
                <tr key={`auto-${i}`} class="muted">
                  <td>{r.protocol}</td>
                  <td>{r.portEnd ? `${r.portStart}-${r.portEnd}` : r.portStart}</td>
                  <td>::/0</td>
                  <td colSpan={2}>{r.description} (read-only)</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {problems.map((p, i) =>
          p ? (
            <p class="error" role="alert" key={i}>
              Rule {i + 1}: {p}
            </p>
          ) : null,
        )}
        <ErrorText error={error} />
        <div class="row">
          <button
            type="button"
            onClick={() =>
              setRows((now) => [
                ...now,
                { protocol: 'tcp', ports: '', sources: '', description: '' },
              ])
            }
          >
            Add rule
          </button>
          <button type="submit" class="primary" disabled={busy || problems.some(Boolean)}>
            {busy ? <Spinner label="Saving…" /> : 'Save firewall'}
          </button>
          {saved ? (
            <span class="ok" role="status">
              Saved
            </span>
          ) : null}
        </div>
      </form>
    </section>
  );
}
