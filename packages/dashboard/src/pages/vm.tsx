/**
 * One VM: its details (polled), snapshot/pause/resume/delete, TTL, environment, and the panels:
 * streamed exec, terminal, files, firewall, published services.
 * @module
 */
import { Fragment } from 'preact';
import { useState } from 'preact/hooks';
import {
  type Vm,
  createSnapshot,
  deleteVm,
  getVm,
  pauseVm,
  refreshTtl,
  resumeVm,
  updateVm,
} from '../api.js';
import { ExecPanel } from '../components/exec-panel.js';
import { FilesPanel } from '../components/files-panel.js';
import { FirewallEditor } from '../components/firewall-editor.js';
import { ServicesPanel } from '../components/services-panel.js';
import { TerminalPanel } from '../components/terminal.js';
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
import { RenameForm } from './vms.js';

export function VmPage(props: { id: string }) {
  const vm = usePoll(() => getVm(props.id), 2000, [props.id]);
  const [error, setError] = useState<unknown>(undefined);
  const [deleting, setDeleting] = useState(false);
  const [renaming, setRenaming] = useState(false);

  if (!vm.data) {
    return (
      <section>
        <p>
          <Link href="/">← VMs</Link>
        </p>
        {vm.error ? <ErrorText error={vm.error} /> : <Spinner label="Loading VM…" />}
      </section>
    );
  }
  const v = vm.data;
  const running = v.status === 'running';

  return (
    <section aria-labelledby="vm-title">
      <p>
        <Link href="/">← VMs</Link>
      </p>
      <div class="row spread">
        {renaming ? (
          <RenameForm
            current={v.name}
            onCancel={() => setRenaming(false)}
            onSave={async (name) => {
              await updateVm(v.id, { name });
              setRenaming(false);
              await vm.reload();
            }}
          />
        ) : (
          <h1 id="vm-title">
            {v.name} <StatusBadge status={v.status} />
          </h1>
        )}
        <div class="row">
          <button type="button" onClick={() => setRenaming(true)}>
            Rename
          </button>
          {running ? (
            <ActionButton
              onError={setError}
              action={async () => {
                await pauseVm(v.id);
                await vm.reload();
              }}
            >
              Pause
            </ActionButton>
          ) : v.status === 'paused' ? (
            <ActionButton
              onError={setError}
              action={async () => {
                await resumeVm(v.id);
                await vm.reload();
              }}
            >
              Resume
            </ActionButton>
          ) : null}
          <button type="button" class="danger" onClick={() => setDeleting(true)}>
            Delete
          </button>
        </div>
      </div>
      <ErrorText error={error} />
      {vm.error ? <ErrorText error={vm.error} /> : null}
      {v.statusMessage ? <p class="muted">{v.statusMessage}</p> : null}

      <div class="grid">
        <section class="card" aria-labelledby="details-title">
          <h2 id="details-title">Details</h2>
          <dl class="details">
            <dt>ID</dt>
            <dd class="mono">{v.id}</dd>
            <dt>Machine</dt>
            <dd>
              {v.machineName} · {v.cpu} vCPU · {v.memoryMiB} MiB · {v.diskGiB} GiB disk
            </dd>
            <dt>IPv6</dt>
            <dd class="mono">{v.publicIpv6 ?? '—'}</dd>
            <dt>Age</dt>
            <dd>{age(v.createdAt)}</dd>
            <dt>Source</dt>
            <dd>
              {v.sourceSnapshotId ? (
                <Link href={`/snapshots/${v.sourceSnapshotId}`}>{v.sourceName || 'snapshot'}</Link>
              ) : (
                'fresh launch'
              )}
            </dd>
            <dt>TTL</dt>
            <dd>{ttlText(v)}</dd>
          </dl>
          <SnapshotForm vm={v} />
        </section>
        <TtlCard vm={v} onSaved={() => void vm.reload()} />
        <section class="card" aria-labelledby="env-title">
          <h2 id="env-title">Environment</h2>
          {Object.keys(v.envVars).length === 0 ? (
            <p class="muted">No variables (set them at launch or restore).</p>
          ) : (
            <dl class="details mono">
              {Object.entries(v.envVars).map(([k, val]) => (
                <Fragment key={k}>
                  <dt>{k}</dt>
                  <dd>{val}</dd>
                </Fragment>
              ))}
            </dl>
          )}
        </section>
      </div>

      <ExecPanel vmId={v.id} disabled={!running} />
      <TerminalPanel vmId={v.id} disabled={!running} />
      <FilesPanel vmId={v.id} disabled={!running} />
      <FirewallEditor key={v.id} vm={v} onSaved={() => void vm.reload()} />
      <ServicesPanel vmId={v.id} onChange={() => void vm.reload()} />

      {deleting ? (
        <ConfirmDialog
          title={`Delete ${v.name}?`}
          body={<p>The VM stops and its disk and memory are gone. Snapshots of it stay.</p>}
          confirmLabel="Delete VM"
          onConfirm={async () => {
            await deleteVm(v.id);
            navigate('/');
          }}
          onClose={() => setDeleting(false)}
        />
      ) : null}
    </section>
  );
}

function SnapshotForm(props: { vm: Vm }) {
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const can = props.vm.status === 'running' || props.vm.status === 'paused';
  return (
    <form
      class="row"
      aria-label="Take a snapshot"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          const snap = await createSnapshot(props.vm.id, name.trim() || undefined);
          navigate(`/snapshots/${snap.id}`);
        } catch (err) {
          setError(err);
          setBusy(false);
        }
      }}
    >
      <label class="grow">
        Snapshot name
        <input
          name="snapshot-name"
          placeholder="optional"
          value={name}
          onInput={(e) => setName(e.currentTarget.value)}
        />
      </label>
      <button type="submit" class="primary" disabled={!can || busy}>
        {busy ? <Spinner label="Snapshotting…" /> : 'Snapshot'}
      </button>
      <ErrorText error={error} />
    </form>
  );
}

function TtlCard(props: { vm: Vm; onSaved: () => void }) {
  const [seconds, setSeconds] = useState(String(props.vm.ttl?.seconds ?? ''));
  const [action, setAction] = useState<'pause' | 'delete'>(props.vm.ttl?.action ?? 'pause');
  const [error, setError] = useState<unknown>(undefined);
  const id = props.vm.id;
  return (
    <section class="card" aria-labelledby="ttl-title">
      <h2 id="ttl-title">Time to live</h2>
      <p class="muted">{ttlText(props.vm)}</p>
      <form class="row" onSubmit={(e) => e.preventDefault()}>
        <label>
          Seconds
          <input
            type="number"
            min={1}
            max={31536000}
            value={seconds}
            onInput={(e) => setSeconds(e.currentTarget.value)}
          />
        </label>
        <label>
          Then
          <select
            value={action}
            onChange={(e) => setAction(e.currentTarget.value as 'pause' | 'delete')}
          >
            <option value="pause">pause</option>
            <option value="delete">delete</option>
          </select>
        </label>
        <ActionButton
          disabled={seconds === ''}
          onError={setError}
          action={async () => {
            await updateVm(id, { ttl: { seconds: Number(seconds), action } });
            props.onSaved();
          }}
        >
          Set
        </ActionButton>
        {props.vm.ttl ? (
          <>
            <ActionButton
              onError={setError}
              action={async () => {
                await refreshTtl(id);
                props.onSaved();
              }}
            >
              Refresh
            </ActionButton>
            <ActionButton
              onError={setError}
              action={async () => {
                await updateVm(id, { ttl: null });
                setSeconds('');
                props.onSaved();
              }}
            >
              Remove
            </ActionButton>
          </>
        ) : null}
      </form>
      <ErrorText error={error} />
    </section>
  );
}
