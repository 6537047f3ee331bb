/**
 * Snapshots: the list, and for the selected one its lineage tree (SVG) and actions: restore or
 * fork N from it, rename, delete. The VMs a fork made are listed with their status and can be
 * deleted together.
 * @module
 */
import { useState } from 'preact/hooks';
import {
  type Snapshot,
  type Vm,
  deleteSnapshot,
  deleteVm,
  forkSnapshot,
  getVm,
  lineage,
  listSnapshots,
  renameSnapshot,
} from '../api.js';
import { LineageTree } from '../components/lineage-tree.js';
import { Link, navigate } from '../router.js';
import { ConfirmDialog, ErrorText, Spinner, StatusBadge, age, usePoll } from '../ui.js';
import { RenameForm } from './vms.js';

export function SnapshotsPage(props: { selected?: string | undefined }) {
  const snapshots = usePoll(listSnapshots, 3000);
  const selected = snapshots.data?.find((s) => s.id === props.selected);
  return (
    <section aria-labelledby="snapshots-title">
      <h1 id="snapshots-title">Snapshots</h1>
      <ErrorText error={snapshots.error} />
      <div class="split">
        <div class="list-pane">
          {snapshots.data === undefined ? (
            snapshots.error ? null : (
              <Spinner label="Loading snapshots…" />
            )
          ) : snapshots.data.length === 0 ? (
            <p class="muted">No snapshots yet: take one from a VM's page.</p>
          ) : (
            <ul class="plain snapshot-list">
              {snapshots.data.map((s) => (
                <li key={s.id}>
                  <Link
                    href={`/snapshots/${s.id}`}
                    class={s.id === props.selected ? 'active' : ''}
                    aria-current={s.id === props.selected ? 'page' : undefined}
                  >
                    <span class="snap-name">{s.name}</span>
                    <span class="muted small">
                      {s.machineName} · {age(s.createdAt)} ago
                    </span>
                    {s.status !== 'ready' ? <StatusBadge status={s.status} /> : null}
                  </Link>
                </li>
              ))}
            </ul>
          )}
        </div>
        <div class="detail-pane">
          {props.selected === undefined ? (
            <p class="muted">Select a snapshot to see its lineage and restore from it.</p>
          ) : selected ? (
            <SnapshotDetail
              key={selected.id}
              snapshot={selected}
              onChange={() => void snapshots.reload()}
            />
          ) : snapshots.data ? (
            <ErrorText error={new Error(`no snapshot ${props.selected}`)} />
          ) : null}
        </div>
      </div>
    </section>
  );
}

function SnapshotDetail(props: { snapshot: Snapshot; onChange: () => void }) {
  const s = props.snapshot;
  const tree = usePoll(() => lineage(s.id), 5000, [s.id]);
  const [count, setCount] = useState('1');
  const [prefix, setPrefix] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const [forked, setForked] = useState<Vm[]>([]);
  const [renaming, setRenaming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deletingForks, setDeletingForks] = useState(false);

  return (
    <section aria-labelledby="snapshot-title">
      <div class="row spread">
        {renaming ? (
          <RenameForm
            current={s.name}
            onCancel={() => setRenaming(false)}
            onSave={async (name) => {
              await renameSnapshot(s.id, name);
              setRenaming(false);
              props.onChange();
            }}
          />
        ) : (
          <h2 id="snapshot-title">
            {s.name} <StatusBadge status={s.status} />
          </h2>
        )}
        <div class="row">
          <button type="button" onClick={() => setRenaming(true)}>
            Rename
          </button>
          <button type="button" class="danger" onClick={() => setDeleting(true)}>
            Delete
          </button>
        </div>
      </div>
      <p class="muted small mono">
        {s.id} · {s.machineName} · of VM <Link href={`/vms/${s.vmId}`}>{s.vmId.slice(0, 8)}</Link>
      </p>

      <form
        class="card row"
        aria-label="Restore VMs from this snapshot"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            const result = await forkSnapshot(s.id, Number(count), prefix.trim() || undefined);
            setForked(result.vms);
            void tree.reload();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label>
          How many
          <input
            name="fork-count"
            type="number"
            min={1}
            max={100}
            required
            value={count}
            onInput={(e) => setCount(e.currentTarget.value)}
          />
        </label>
        <label class="grow">
          Name prefix
          <input
            name="fork-prefix"
            placeholder={s.name}
            value={prefix}
            onInput={(e) => setPrefix(e.currentTarget.value)}
          />
        </label>
        <button type="submit" class="primary" disabled={busy || s.status !== 'ready'}>
          {busy ? <Spinner label="Restoring…" /> : Number(count) > 1 ? `Fork ${count}` : 'Restore'}
        </button>
      </form>
      <ErrorText error={error} />
      {forked.length > 0 ? (
        <ForkedList vms={forked} onDelete={() => setDeletingForks(true)} />
      ) : null}

      <h3>Lineage</h3>
      {tree.data ? (
        <LineageTree lineage={tree.data} selected={s.id} />
      ) : tree.error ? (
        <ErrorText error={tree.error} />
      ) : (
        <Spinner label="Loading lineage…" />
      )}

      {deleting ? (
        <ConfirmDialog
          title={`Delete snapshot ${s.name}?`}
          body={<p>VMs restored from it keep running; it can no longer be restored.</p>}
          confirmLabel="Delete snapshot"
          onConfirm={async () => {
            await deleteSnapshot(s.id);
            props.onChange();
            navigate('/snapshots');
          }}
          onClose={() => setDeleting(false)}
        />
      ) : null}
      {deletingForks ? (
        <ConfirmDialog
          title={`Delete ${forked.length} VM${forked.length > 1 ? 's' : ''}?`}
          body={<p>{forked.map((v) => v.name).join(', ')}</p>}
          confirmLabel="Delete VMs"
          onConfirm={async () => {
            await Promise.all(forked.map((v) => deleteVm(v.id)));
            setForked([]);
            void tree.reload();
          }}
          onClose={() => setDeletingForks(false)}
        />
      ) : null}
    </section>
  );
}

/** The VMs a restore made, their status kept fresh. */
function ForkedList(props: { vms: Vm[]; onDelete: () => void }) {
  const live = usePoll(
    () => Promise.all(props.vms.map((v) => getVm(v.id).catch(() => ({ ...v, status: 'deleted' })))),
    2000,
    [props.vms.map((v) => v.id).join()],
  );
  const vms = live.data ?? props.vms;
  return (
    <section class="card forked" aria-labelledby="forked-title">
      <div class="row spread">
        <h3 id="forked-title">
          Restored {vms.length} VM{vms.length > 1 ? 's' : ''}
        </h3>
        <button type="button" class="danger" onClick={props.onDelete}>
          Delete these VMs
        </button>
      </div>
      <ul class="plain">
        {vms.map((v) => (
          <li key={v.id} data-vm-id={v.id}>
            <Link href={`/vms/${v.id}`}>{v.name}</Link> <StatusBadge status={v.status} />
          </li>
        ))}
      </ul>
    </section>
  );
}
