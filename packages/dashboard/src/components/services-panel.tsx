import { useState } from 'preact/hooks';
import { addService, listServices, removeService } from '../api.js';
import { ActionButton, ErrorText, Spinner, usePoll } from '../ui.js';

/** Published HTTP services of the VM, with the URLs the proxy serves them at. */
export function ServicesPanel(props: { vmId: string; onChange: () => void }) {
  const services = usePoll(() => listServices(props.vmId), 0, [props.vmId]);
  const [name, setName] = useState('');
  const [port, setPort] = useState('');
  const [h2c, setH2c] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  return (
    <section class="card" aria-labelledby="services-title">
      <h2 id="services-title">Published services</h2>
      <ErrorText error={services.error} />
      {services.data === undefined ? (
        services.error ? null : (
          <Spinner />
        )
      ) : services.data.length === 0 ? (
        <p class="muted">None published.</p>
      ) : (
        <ul class="plain">
          {services.data.map((s) => (
            <li key={s.name} class="row spread">
              <span>
                <strong>{s.name}</strong> → port {s.port}
                {s.h2c ? ' (h2c)' : ''}:{' '}
                <a href={s.url} target="_blank" rel="noreferrer noopener">
                  {s.url}
                </a>
              </span>
              <ActionButton
                onError={setError}
                aria-label={`Unpublish ${s.name}`}
                action={async () => {
                  await removeService(props.vmId, s.name);
                  await services.reload();
                  props.onChange();
                }}
              >
                Unpublish
              </ActionButton>
            </li>
          ))}
        </ul>
      )}
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            await addService(props.vmId, { name: name.trim(), port: Number(port), h2c });
            setName('');
            setPort('');
            await services.reload();
            props.onChange();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label>
          Name
          <input
            required
            pattern="[a-z0-9]+(-[a-z0-9]+)*"
            maxLength={29}
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
          />
        </label>
        <label>
          Port
          <input
            required
            type="number"
            min={1024}
            max={65535}
            value={port}
            onInput={(e) => setPort(e.currentTarget.value)}
          />
        </label>
        <label class="check">
          <input type="checkbox" checked={h2c} onChange={(e) => setH2c(e.currentTarget.checked)} />
          h2c
        </label>
        <button type="submit" disabled={busy}>
          {busy ? <Spinner label="Publishing…" /> : 'Publish'}
        </button>
      </form>
      <ErrorText error={error} />
    </section>
  );
}
