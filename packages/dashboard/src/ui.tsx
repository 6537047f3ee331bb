/**
 * Small shared pieces: spinner, error line, a button that spins while its action runs, a
 * confirmation dialog, polling, and formatting.
 * @module
 */
import type { ButtonHTMLAttributes, ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from './api.js';

export function Spinner(props: { label?: string }) {
  return (
    <span class="spinner-wrap" role="status" aria-live="polite">
      <span class="spinner" aria-hidden="true" />
      <span class={props.label ? '' : 'visually-hidden'}>{props.label ?? 'Loading…'}</span>
    </span>
  );
}

/** The API's error as given: its status and message (and the field it names). */
export function ErrorText(props: { error: unknown }) {
  if (props.error === undefined || props.error === null) return null;
  const e = props.error;
  const text =
    e instanceof ApiError
      ? `${e.status}: ${e.message}${e.field ? ` (field: ${e.field})` : ''}`
      : e instanceof Error
        ? e.message
        : String(e);
  return (
    <p class="error" role="alert">
      {text}
    </p>
  );
}

/**
 * Runs `fn` now and every `intervalMs` (paused while the tab is hidden); `reload` runs it again
 * at once. `data` keeps the last good value while a later run fails.
 */
export function usePoll<T>(fn: () => Promise<T>, intervalMs: number, deps: unknown[] = []) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const seq = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++seq.current;
    try {
      const value = await fnRef.current();
      if (mine !== seq.current) return;
      setData(value);
      setError(undefined);
    } catch (err) {
      if (mine === seq.current) setError(err);
    } finally {
      if (mine === seq.current) setLoading(false);
    }
  }, []);
  useEffect(() => {
    setLoading(true);
    setData(undefined);
    void reload();
    if (intervalMs <= 0) return;
    const timer = setInterval(() => {
      if (!document.hidden) void reload();
    }, intervalMs);
    return () => {
      clearInterval(timer);
      seq.current++;
    };
  }, deps);
  return { data, error, loading, reload };
}

/** A button whose async action shows a spinner and disables it until done; errors go to onError. */
export function ActionButton(
  props: {
    action: () => Promise<unknown>;
    onError?: (err: unknown) => void;
    children: ComponentChildren;
  } & Omit<ButtonHTMLAttributes, 'action' | 'onError'>,
) {
  const { action, onError, children, disabled, ...rest } = props;
  const [busy, setBusy] = useState(false);
  return (
    <button
      type="button"
      {...rest}
      disabled={busy || Boolean(disabled)}
      aria-busy={busy}
      onClick={async () => {
        setBusy(true);
        onError?.(undefined);
        try {
          await action();
        } catch (err) {
          onError?.(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      {busy ? <span class="spinner small" aria-hidden="true" /> : null}
      {children}
    </button>
  );
}

/**
 * A modal confirmation (native `<dialog>`: focus moves into it, Escape cancels). `confirm`
 * runs with a spinner; its error stays in the dialog.
 */
export function ConfirmDialog(props: {
  title: string;
  body: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => Promise<unknown>;
  onClose: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
  }, []);
  return (
    <dialog ref={ref} class="dialog" aria-labelledby="dialog-title" onClose={props.onClose}>
      <h2 id="dialog-title">{props.title}</h2>
      <div>{props.body}</div>
      <ErrorText error={error} />
      <div class="row end">
        <button type="button" onClick={() => ref.current?.close()}>
          Cancel
        </button>
        <ActionButton
          class="danger"
          onError={setError}
          action={async () => {
            await props.onConfirm();
            ref.current?.close();
          }}
        >
          {props.confirmLabel}
        </ActionButton>
      </div>
    </dialog>
  );
}

export function age(iso: string, now = Date.now()): string {
  return duration(now - Date.parse(iso));
}

export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function StatusBadge(props: { status: string }) {
  return <span class={`badge status-${props.status}`}>{props.status}</span>;
}

/** A VM's TTL in words: time left while running, left at resume while paused. */
export function ttlText(vm: {
  ttl: { seconds: number; action: string } | null;
  expiresAtMs?: number;
  ttlRemainingMs?: number;
}): string {
  if (!vm.ttl) return '—';
  if (vm.expiresAtMs !== undefined) {
    return `${vm.ttl.action} in ${duration(vm.expiresAtMs - Date.now())}`;
  }
  if (vm.ttlRemainingMs !== undefined) {
    return `${vm.ttl.action} ${duration(vm.ttlRemainingMs)} after resume`;
  }
  return `${vm.ttl.action} after ${duration(vm.ttl.seconds * 1000)}`;
}
