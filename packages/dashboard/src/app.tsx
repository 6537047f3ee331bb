/**
 * The shell: sign-in gate, navigation and the page for the current path.
 * @module
 */
import { useEffect, useState } from 'preact/hooks';
import { type ApiError, forgetKey, savedKey, setUnauthorizedHandler } from './api.js';
import { Link, usePath } from './router.js';
import { OrgPage } from './pages/org.js';
import { SignIn } from './pages/sign-in.js';
import { SnapshotsPage } from './pages/snapshots.js';
import { VmPage } from './pages/vm.js';
import { VmsPage } from './pages/vms.js';

export function App() {
  const [signedIn, setSignedIn] = useState(savedKey() !== null);
  const [signInError, setSignInError] = useState<ApiError | undefined>(undefined);
  const path = usePath();

  useEffect(() => {
    // The key was revoked (or the server's data reset) while signed in.
    setUnauthorizedHandler((error) => {
      forgetKey();
      setSignInError(error);
      setSignedIn(false);
    });
  }, []);

  if (!signedIn) {
    return (
      <SignIn
        error={signInError}
        onSignedIn={() => {
          setSignInError(undefined);
          setSignedIn(true);
        }}
      />
    );
  }

  const vmMatch = /^\/vms\/([^/]+)$/.exec(path);
  const snapMatch = /^\/snapshots(?:\/([^/]+))?$/.exec(path);
  const section =
    vmMatch || path === '/' ? 'vms' : snapMatch ? 'snapshots' : path === '/org' ? 'org' : '';
  let page;
  if (path === '/' || path === '/vms') page = <VmsPage />;
  else if (vmMatch) page = <VmPage id={decodeURIComponent(vmMatch[1] as string)} />;
  else if (snapMatch)
    page = <SnapshotsPage selected={snapMatch[1] ? decodeURIComponent(snapMatch[1]) : undefined} />;
  else if (path === '/org') page = <OrgPage />;
  else
    page = (
      <section>
        <h1>Not found</h1>
        <p>
          No page at <code>{path}</code>. <Link href="/">Back to VMs</Link>
        </p>
      </section>
    );

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link href="/" class="brand">
          FastVM
        </Link>
        <nav aria-label="Main">
          <Link href="/" aria-current={section === 'vms' ? 'page' : undefined}>
            VMs
          </Link>
          <Link href="/snapshots" aria-current={section === 'snapshots' ? 'page' : undefined}>
            Snapshots
          </Link>
          <Link href="/org" aria-current={section === 'org' ? 'page' : undefined}>
            Org
          </Link>
        </nav>
        <button
          type="button"
          class="link-button"
          onClick={() => {
            forgetKey();
            setSignedIn(false);
          }}
        >
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </>
  );
}
