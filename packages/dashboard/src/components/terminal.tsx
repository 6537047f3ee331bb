import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'preact/hooks';
import { openConsole } from '../api.js';
import { ErrorText, Spinner } from '../ui.js';

type State = 'idle' | 'connecting' | 'open' | 'closed';

/**
 * The VM's interactive shell (console WebSocket, contract §5): keystrokes go as binary frames,
 * the size as a `resize` text frame; output arrives as binary frames.
 */
export function TerminalPanel(props: { vmId: string; disabled: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<State>('idle');
  const [closeReason, setCloseReason] = useState('');
  const [error, setError] = useState<unknown>(undefined);
  const [attempt, setAttempt] = useState(0);
  const closeButton = useRef<HTMLButtonElement>(null);

  useEffect(() => {
    if (attempt === 0 || !host.current) return;
    const term = new Terminal({
      cursorBlink: true,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
      fontSize: 13,
      scrollback: 2000,
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host.current);
    fit.fit();
    let socket: WebSocket | undefined;
    let disposed = false;
    const encoder = new TextEncoder();
    setState('connecting');
    setError(undefined);
    setCloseReason('');
    openConsole(props.vmId, term.cols, term.rows)
      .then((ws) => {
        if (disposed) return ws.close();
        socket = ws;
        ws.onopen = () => {
          setState('open');
          ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
          term.focus();
        };
        ws.onmessage = (ev) => {
          term.write(
            typeof ev.data === 'string' ? ev.data : new Uint8Array(ev.data as ArrayBuffer),
          );
        };
        ws.onclose = (ev) => {
          setState('closed');
          let reason = ev.reason;
          try {
            const exit = JSON.parse(ev.reason) as { type?: string; exitCode?: number };
            if (exit.type === 'exit') reason = `shell exited with ${exit.exitCode}`;
          } catch {
            // a plain reason
          }
          setCloseReason(reason || `closed (${ev.code})`);
        };
        ws.onerror = () => setError(new Error('the console connection failed'));
      })
      .catch((err: unknown) => {
        setState('closed');
        setError(err);
      });
    const input = term.onData((data) => {
      if (socket?.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    const resize = term.onResize(({ cols, rows }) => {
      if (socket?.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: 'resize', cols, rows }));
      }
    });
    // Tab and Escape belong to the shell; Escape twice within half a second leaves the terminal.
    let lastEscape = 0;
    term.attachCustomKeyEventHandler((e) => {
      if (e.type !== 'keydown' || e.key !== 'Escape') return true;
      if (e.timeStamp - lastEscape < 500) {
        term.blur();
        closeButton.current?.focus();
        return false;
      }
      lastEscape = e.timeStamp;
      return true;
    });
    const observer = new ResizeObserver(() => fit.fit());
    observer.observe(host.current);
    return () => {
      disposed = true;
      observer.disconnect();
      input.dispose();
      resize.dispose();
      if (socket) {
        socket.onclose = null;
        socket.close();
      }
      term.dispose();
    };
  }, [attempt, props.vmId]);

  return (
    <section class="card" aria-labelledby="terminal-title">
      <div class="row spread">
        <h2 id="terminal-title">Terminal</h2>
        <div class="row">
          {state === 'connecting' ? <Spinner label="Connecting…" /> : null}
          {state === 'closed' ? <span class="muted">{closeReason}</span> : null}
          {state === 'idle' || state === 'closed' ? (
            <button
              type="button"
              class="primary"
              disabled={props.disabled}
              onClick={() => setAttempt((a) => a + 1)}
            >
              {state === 'idle' ? 'Open terminal' : 'Reconnect'}
            </button>
          ) : (
            <button
              type="button"
              ref={closeButton}
              onClick={() => {
                setAttempt(0);
                setState('idle');
              }}
            >
              Close
            </button>
          )}
        </div>
      </div>
      <ErrorText error={error} />
      <div
        ref={host}
        class={`terminal ${attempt === 0 ? 'hidden' : ''}`}
        aria-label="Terminal (press Escape twice to leave it)"
      />
    </section>
  );
}
