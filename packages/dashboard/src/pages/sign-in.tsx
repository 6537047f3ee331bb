import { useState } from 'preact/hooks';
import { type ApiError, quotas, saveKey } from '../api.js';
import { ErrorText, Spinner } from '../ui.js';

/** Sign-in with an API key, checked against the server before it is kept for this tab. */
export function SignIn(props: { error?: ApiError | undefined; onSignedIn: () => void }) {
  const [key, setKey] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(props.error);
  return (
    <main class="sign-in" id="main">
      <form
        class="card"
        aria-labelledby="sign-in-title"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            await quotas(key.trim());
            saveKey(key.trim());
            props.onSignedIn();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1 id="sign-in-title">FastVM console</h1>
        <p class="muted">
          Sign in with an API key. It is kept in this tab only and sent as a header, never in a URL.
        </p>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autocomplete="off"
          spellcheck={false}
          required
          autofocus
          value={key}
          onInput={(e) => setKey(e.currentTarget.value)}
        />
        <ErrorText error={error} />
        <button type="submit" class="primary" disabled={busy || key.trim() === ''}>
          {busy ? <Spinner label="Checking…" /> : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
