import { useRef, useState } from 'preact/hooks';
import { type ExecExit, execStream } from '../api.js';
import { ErrorText, Spinner } from '../ui.js';

interface Chunk {
  stream: 'stdout' | 'stderr';
  text: string;
}

/** Runs a shell command in the VM and shows its output as it streams (NDJSON exec). */
export function ExecPanel(props: { vmId: string; disabled: boolean }) {
  const [command, setCommand] = useState('');
  const [chunks, setChunks] = useState<Chunk[]>([]);
  const [exit, setExit] = useState<ExecExit | undefined>(undefined);
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const abort = useRef<AbortController | null>(null);
  return (
    <section class="card" aria-labelledby="exec-title">
      <h2 id="exec-title">Run a command</h2>
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          if (command.trim() === '') return;
          const controller = new AbortController();
          abort.current = controller;
          setChunks([]);
          setExit(undefined);
          setError(undefined);
          setRunning(true);
          try {
            const result = await execStream(
              props.vmId,
              ['sh', '-c', command],
              (stream, text) => setChunks((c) => [...c, { stream, text }]),
              controller.signal,
            );
            setExit(result);
          } catch (err) {
            if (!controller.signal.aborted) setError(err);
          } finally {
            setRunning(false);
          }
        }}
      >
        <label class="grow">
          <span class="visually-hidden">Command</span>
          <input
            class="mono"
            name="command"
            placeholder="e.g. uname -a"
            value={command}
            disabled={props.disabled}
            onInput={(e) => setCommand(e.currentTarget.value)}
          />
        </label>
        {running ? (
          <button type="button" onClick={() => abort.current?.abort()}>
            Stop
          </button>
        ) : (
          <button type="submit" class="primary" disabled={props.disabled}>
            Run
          </button>
        )}
      </form>
      <ErrorText error={error} />
      <pre class="output" aria-live="polite" aria-label="Command output">
        {chunks.map((c, i) => (
          <span key={i} class={c.stream}>
            {c.text}
          </span>
        ))}
      </pre>
      <p class="muted exec-status">
        {running ? (
          <Spinner label="Running…" />
        ) : exit ? (
          `exit ${exit.exitCode}${exit.timedOut ? ' (timed out)' : ''} · ${exit.durationMs} ms`
        ) : null}
      </p>
    </section>
  );
}
