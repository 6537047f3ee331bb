/**
 * VMs: the live list (polled every 2 s) with search and a status filter; launch (fresh or from
 * a snapshot); per row: pause/resume, rename, delete with confirmation.
 * @module
 */
import { useState } from 'preact/hooks';
import {
  type Vm,
  deleteVm,
  launchVm,
  listSnapshots,
  listVms,
  pauseVm,
  resumeVm,
  updateVm,
} from '../api.js';
import { Link, navigate } from '../router.js';
import {
  ActionButton,
  ConfirmDialog,
  ErrorText,
  Spinner,
  StatusBadge,
  age,
  ttlText,
  usePoll,
} from '../ui.js';

const MACHINES = ['c1m2', 'c2m4', 'c4m8', 'c8m16'];
const STATUSES = ['running', 'provisioning', 'paused', 'pausing', 'resuming', 'stopped', 'error'];

export function VmsPage() {
  const vms = usePoll(listVms, 2000);
  const [query, setQuery] = useState('');
  const [status, setStatus] = useState('');
  const [actionError, setActionError] = useState<unknown>(undefined);
  const [deleting, setDeleting] = useState<Vm | undefined>(undefined);
  const [renaming, setRenaming] = useState<string | undefined>(undefined);

  const q = query.trim().toLowerCase();
  const shown = [...(vms.data ?? [])]
    .sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }))
    .filter(
      (vm) =>
        (status === '' || vm.status === status) &&
        (q === '' ||
          vm.name.toLowerCase().includes(q) ||
          vm.id.includes(q) ||
          (vm.publicIpv6 ?? '').includes(q)),
    );

  return (
    <section aria-labelledby="vms-title">
      <div class="row spread">
        <h1 id="vms-title">VMs</h1>
        {vms.loading && vms.data ? <Spinner label="Refreshing" /> : null}
      </div>
      <LaunchForm onLaunched={() => void vms.reload()} />
      <div class="row filters" role="search">
        <label>
          Search
          <input
            type="search"
            placeholder="name, id or IPv6"
            value={query}
            onInput={(e) => setQuery(e.currentTarget.value)}
          />
        </label>
        <label>
          Status
          <select value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option value={s} key={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
      </div>
      <ErrorText error={vms.error} />
      <ErrorText error={actionError} />
      {vms.data === undefined ? (
        vms.error ? null : (
          <Spinner label="Loading VMs…" />
        )
      ) : shown.length === 0 ? (
        <p class="muted">
          {vms.data.length === 0 ? 'No VMs yet: launch one above.' : 'No VM matches.'}
        </p>
      ) : (
        <div class="table-wrap">
          <table class="vms">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Machine</th>
                <th scope="col">IPv6</th>
                <th scope="col">Age</th>
                <th scope="col">TTL</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {shown.map((vm) => (
                <tr key={vm.id} data-vm-id={vm.id}>
                  <td>
                    {renaming === vm.id ? (
                      <RenameForm
                        current={vm.name}
                        onCancel={() => setRenaming(undefined)}
                        onSave={async (name) => {
                          await updateVm(vm.id, { name });
                          setRenaming(undefined);
                          await vms.reload();
                        }}
                      />
                    ) : (
                      <Link href={`/vms/${vm.id}`} class="vm-name">
                        {vm.name}
                      </Link>
                    )}
                  </td>
                  <td data-label="Status">
                    <StatusBadge status={vm.status} />
                  </td>
                  <td data-label="Machine">{vm.machineName}</td>
                  <td data-label="IPv6" class="mono">
                    {vm.publicIpv6 ?? '—'}
                  </td>
                  <td data-label="Age">{age(vm.createdAt)}</td>
                  <td data-label="TTL">{ttlText(vm)}</td>
                  <td class="actions">
                    {vm.status === 'running' ? (
                      <ActionButton
                        onError={setActionError}
                        action={async () => {
                          await pauseVm(vm.id);
                          await vms.reload();
                        }}
                      >
                        Pause
                      </ActionButton>
                    ) : vm.status === 'paused' ? (
                      <ActionButton
                        onError={setActionError}
                        action={async () => {
                          await resumeVm(vm.id);
                          await vms.reload();
                        }}
                      >
                        Resume
                      </ActionButton>
                    ) : null}
                    <button type="button" onClick={() => setRenaming(vm.id)}>
                      Rename
                    </button>
                    <button type="button" class="danger" onClick={() => setDeleting(vm)}>
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {deleting ? (
        <ConfirmDialog
          title={`Delete ${deleting.name}?`}
          body={<p>The VM stops and its disk and memory are gone. Snapshots of it stay.</p>}
          confirmLabel="Delete VM"
          onConfirm={async () => {
            await deleteVm(deleting.id);
            await vms.reload();
          }}
          onClose={() => setDeleting(undefined)}
        />
      ) : null}
    </section>
  );
}

export function RenameForm(props: {
  current: string;
  onSave: (name: string) => Promise<void>;
  onCancel: () => void;
}) {
  const [name, setName] = useState(props.current);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  return (
    <form
      class="inline-form"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          await props.onSave(name);
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
      onKeyDown={(e) => {
        if (e.key === 'Escape') props.onCancel();
      }}
    >
      <input
        aria-label="New name"
        value={name}
        autofocus
        onInput={(e) => setName(e.currentTarget.value)}
      />
      <button type="submit" disabled={busy}>
        {busy ? <span class="spinner small" aria-hidden="true" /> : null}Save
      </button>
      <button type="button" onClick={props.onCancel}>
        Cancel
      </button>
      <ErrorText error={error} />
    </form>
  );
}

function LaunchForm(props: { onLaunched: () => void }) {
  const [source, setSource] = useState('c1m2');
  const [name, setName] = useState('');
  const [ttlSeconds, setTtlSeconds] = useState('');
  const [ttlAction, setTtlAction] = useState<'pause' | 'delete'>('pause');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const snapshots = usePoll(listSnapshots, 0);
  return (
    <form
      class="card launch"
      aria-label="Launch a VM"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          const fromSnapshot = source.startsWith('snapshot:');
          const vm = await launchVm({
            ...(fromSnapshot
              ? { snapshotId: source.slice('snapshot:'.length) }
              : { machineType: source }),
            ...(name.trim() ? { name: name.trim() } : {}),
            ...(ttlSeconds ? { ttl: { seconds: Number(ttlSeconds), action: ttlAction } } : {}),
          });
          setName('');
          props.onLaunched();
          navigate(`/vms/${vm.id}`);
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <label>
        From
        <select value={source} onChange={(e) => setSource(e.currentTarget.value)}>
          <optgroup label="Machine type (fresh)">
            {MACHINES.map((m) => (
              <option value={m} key={m}>
                {m}
              </option>
            ))}
          </optgroup>
          {snapshots.data && snapshots.data.length > 0 ? (
            <optgroup label="Snapshot (restore)">
              {snapshots.data.map((s) => (
                <option value={`snapshot:${s.id}`} key={s.id}>
                  {s.name}
                </option>
              ))}
            </optgroup>
          ) : null}
        </select>
      </label>
      <label>
        Name
        <input
          name="vm-name"
          placeholder="optional"
          value={name}
          onInput={(e) => setName(e.currentTarget.value)}
        />
      </label>
      <label>
        TTL (s)
        <input
          type="number"
          min={1}
          placeholder="none"
          value={ttlSeconds}
          onInput={(e) => setTtlSeconds(e.currentTarget.value)}
        />
      </label>
      <label>
        Then
        <select
          value={ttlAction}
          onChange={(e) => setTtlAction(e.currentTarget.value as 'pause' | 'delete')}
        >
          <option value="pause">pause</option>
          <option value="delete">delete</option>
        </select>
      </label>
      <button type="submit" class="primary" disabled={busy}>
        {busy ? <Spinner label="Launching…" /> : 'Launch'}
      </button>
      <ErrorText error={error} />
    </form>
  );
}
