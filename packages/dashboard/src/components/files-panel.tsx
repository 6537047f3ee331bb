import { useState } from 'preact/hooks';
import { downloadFile, uploadFile } from '../api.js';
import { ErrorText, Spinner } from '../ui.js';

/** Upload a file into the VM (presigned storage, contract §6) and download one (a streamed `cat`). */
export function FilesPanel(props: { vmId: string; disabled: boolean }) {
  const [file, setFile] = useState<File | null>(null);
  const [dest, setDest] = useState('/root/');
  const [source, setSource] = useState('');
  const [busy, setBusy] = useState<'' | 'up' | 'down'>('');
  const [error, setError] = useState<unknown>(undefined);
  const [done, setDone] = useState('');
  return (
    <section class="card" aria-labelledby="files-title">
      <h2 id="files-title">Files</h2>
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          if (!file) return;
          const path = dest.endsWith('/') ? dest + file.name : dest;
          setBusy('up');
          setError(undefined);
          setDone('');
          try {
            await uploadFile(props.vmId, file, path);
            setDone(`Uploaded ${file.name} to ${path}`);
          } catch (err) {
            setError(err);
          } finally {
            setBusy('');
          }
        }}
      >
        <label>
          File
          <input type="file" onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)} />
        </label>
        <label class="grow">
          To (guest path; a trailing / keeps the name)
          <input class="mono" value={dest} onInput={(e) => setDest(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={props.disabled || !file || busy !== ''}>
          {busy === 'up' ? <Spinner label="Uploading…" /> : 'Upload'}
        </button>
      </form>
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          const path = source.trim();
          if (!path) return;
          setBusy('down');
          setError(undefined);
          setDone('');
          try {
            const blob = await downloadFile(props.vmId, path);
            const a = document.createElement('a');
            a.href = URL.createObjectURL(blob);
            a.download = path.split('/').pop() || 'download';
            a.click();
            setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
            setDone(`Downloaded ${path} (${blob.size} bytes)`);
          } catch (err) {
            setError(err);
          } finally {
            setBusy('');
          }
        }}
      >
        <label class="grow">
          Download (guest path of a file)
          <input
            class="mono"
            placeholder="/etc/os-release"
            value={source}
            onInput={(e) => setSource(e.currentTarget.value)}
          />
        </label>
        <button type="submit" disabled={props.disabled || busy !== ''}>
          {busy === 'down' ? <Spinner label="Downloading…" /> : 'Download'}
        </button>
      </form>
      <ErrorText error={error} />
      {done ? (
        <p class="ok" role="status">
          {done}
        </p>
      ) : null}
    </section>
  );
}
