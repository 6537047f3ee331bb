/**
 * The web console in a real browser against a real server and real VMs: Debian's Chromium,
 * headless, driven by puppeteer-core (nothing downloaded). One browser page walks through what a
 * user does: a wrong key is refused, sign in, launch a VM, run `echo hi` and see `hi`, type
 * `uname -a` in the terminal and see `Linux`, snapshot, restore 3 from the snapshot page and see
 * them listed, delete them, and look at the org page. Every request the page makes goes to the
 * server's own origin, and the API key appears in no URL and no server log line.
 *
 * Screenshots of each page go to docs/screenshots/ (shown in the README), or to
 * FASTVM_SCREENSHOTS_DIR.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startVmTestServer, type VmTestServer } from '../../server/test/vm-server.js';

const CHROMIUM = process.env.FASTVM_CHROMIUM ?? '/usr/bin/chromium';
// Where the screenshots go (the README shows docs/screenshots; a run rewrites them).
const SHOTS =
  process.env.FASTVM_SCREENSHOTS_DIR ??
  path.resolve(import.meta.dirname, '../../../docs/screenshots');
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844, isMobile: true, hasTouch: true, deviceScaleFactor: 1 };

describe('dashboard in Chromium (real VMs)', () => {
  let t: VmTestServer;
  let browser: Browser;
  let page: Page;
  let base: string;
  const logLines: string[] = [];
  const requested: string[] = [];
  const pageErrors: string[] = [];

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: run guest/setup.sh --deps-only (apt: chromium)`);
    }
    // The server logs requests at info level: captured, to check the key never shows.
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logLines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    t = await startVmTestServer({ logger: pino({ level: 'info' }, sink) });
    base = t.server.url;
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root cannot use Chromium's sandbox; /dev/shm may be small in containers.
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-sync'],
    });
    page = await browser.newPage();
    page.setDefaultTimeout(60_000);
    await page.setViewport(DESKTOP);
    page.on('request', (r) => requested.push(r.url()));
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    // A CSP violation is reported on the console: nothing the console needs may be refused.
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
    });
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    cdp.on('Network.webSocketCreated', (e) => requested.push(e.url));
    fs.mkdirSync(SHOTS, { recursive: true });
  });

  afterAll(async () => {
    await browser?.close();
    await t?.close();
  });

  const shot = (name: string, fullPage = false) =>
    page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });

  /** Waits until `selector`'s text contains `text`. */
  const waitText = (selector: string, text: string) =>
    page.waitForFunction(
      (s, x) => [...document.querySelectorAll(s)].some((e) => e.textContent?.includes(x)),
      {},
      selector,
      text,
    );

  /**
   * Waits for `done` (a page predicate); an API error the page shows meanwhile at
   * `alertSelector` fails the test with its text instead of a bare timeout.
   */
  const waitOrError = async (done: () => boolean, alertSelector: string) => {
    const stop = new AbortController();
    const alert = page.waitForSelector(alertSelector, { signal: stop.signal }).then(async (h) => {
      throw new Error(`the page shows an error: ${await h?.evaluate((e) => e.textContent)}`);
    });
    alert.catch(() => {});
    try {
      await Promise.race([page.waitForFunction(done), alert]);
    } finally {
      stop.abort();
    }
  };

  const vmIds = async () =>
    ((await t.api.get('/v1/vms')).body as { id: string }[]).map((v) => v.id).sort();

  it('refuses a wrong key with the server’s error, then signs in', async () => {
    await page.goto(base + '/');
    await page.waitForSelector('#api-key');
    await page.type('#api-key', 'fvm_not_a_key');
    await page.keyboard.press('Enter');
    await waitText('.error', '401: invalid or revoked API key');
    await shot('sign-in');

    await page.$eval('#api-key', (e) => ((e as HTMLInputElement).value = ''));
    await page.type('#api-key', t.server.bootstrapKey);
    await page.keyboard.press('Enter');
    await page.waitForSelector('form.launch');
    expect(await page.evaluate(() => sessionStorage.getItem('fastvm.apiKey'))).toBe(
      t.server.bootstrapKey,
    );
  });

  let vmId = '';

  it('launches a VM and streams `echo hi`', async () => {
    await page.type('input[name=vm-name]', 'console-demo');
    await page.click('form.launch button[type=submit]');
    await page.waitForFunction(() => /^\/vms\/[0-9a-f-]{36}$/.test(location.pathname));
    vmId = (await page.evaluate(() => location.pathname)).split('/')[2] as string;
    await waitText('#vm-title .badge', 'running');
    expect((await t.api.get(`/v1/vms/${vmId}`)).body.status).toBe('running');

    await page.type('input[name=command]', 'echo hi');
    await page.keyboard.press('Enter');
    await waitText('.exec-status', 'exit 0');
    expect(await page.$eval('pre.output', (e) => e.textContent)).toBe('hi\n');
  });

  it('runs `uname -a` in the terminal', async () => {
    const open = await page.waitForSelector('#terminal-title + .row button.primary');
    await open!.click();
    // The login shell's prompt, then the command's answer.
    await waitText('.xterm-rows', '#');
    await page.keyboard.type('uname -a\n');
    await waitText('.xterm-rows', 'Linux');
  });

  it('uploads a file into the VM', async () => {
    const local = path.join(t.dataDir, 'hello.txt');
    fs.writeFileSync(local, 'from the browser\n');
    const input = await page.$('input[type=file]');
    await (input as import('puppeteer-core').ElementHandle<HTMLInputElement>).uploadFile(local);
    await page.click('#files-title ~ form button[type=submit]');
    await waitText('#files-title ~ p.ok', 'Uploaded hello.txt to /root/hello.txt');
    const cat = await t.api.post(`/v1/vms/${vmId}/exec`, { command: ['cat', '/root/hello.txt'] });
    expect(cat.body.stdout).toBe('from the browser\n');
  });

  it('downloads a file from the VM', async () => {
    const downloads = path.join(t.dataDir, 'downloads');
    fs.mkdirSync(downloads);
    const cdp = await browser.target().createCDPSession();
    await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: downloads });
    await page.type('#files-title ~ form input[placeholder="/etc/os-release"]', '/root/hello.txt');
    await page.click('#files-title ~ form:nth-of-type(2) button[type=submit]');
    await waitText('#files-title ~ p.ok', 'Downloaded /root/hello.txt (17 bytes)');
    const file = path.join(downloads, 'hello.txt');
    for (let i = 0; i < 100 && !fs.existsSync(file); i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(fs.readFileSync(file, 'utf8')).toBe('from the browser\n');
    // A missing file: the guest's error, as it said it.
    await page.$eval(
      '#files-title ~ form input[placeholder="/etc/os-release"]',
      (e) => ((e as HTMLInputElement).value = ''),
    );
    await page.type('#files-title ~ form input[placeholder="/etc/os-release"]', '/root/nope');
    await page.click('#files-title ~ form:nth-of-type(2) button[type=submit]');
    await waitText('#files-title ~ p.error', 'No such file or directory');
  });

  it('edits the firewall: checks rules before saving, saves valid ones', async () => {
    await page.click('#fw-title ~ form .row button[type=button]'); // Add rule
    await page.type('input[aria-label="Rule 1 ports"]', '70000');
    await waitText('#fw-title ~ form p.error', 'Rule 1: ports: 1-65535');
    expect(await page.$eval('#fw-title ~ form button[type=submit]', (b) => b.disabled)).toBe(true);
    await page.$eval(
      'input[aria-label="Rule 1 ports"]',
      (e) => ((e as HTMLInputElement).value = ''),
    );
    await page.type('input[aria-label="Rule 1 ports"]', '8080-8090');
    await page.type('input[aria-label="Rule 1 sources"]', '2001:db8::/32');
    // Saved, or the API's error (or, after a minute, what the form shows) fails the test.
    await page.waitForFunction(
      () =>
        !document.querySelector<HTMLButtonElement>('#fw-title ~ form button[type=submit]')!
          .disabled,
    );
    await page.click('#fw-title ~ form button[type=submit]');
    await waitOrError(
      () => document.querySelector('#fw-title ~ form .ok')?.textContent?.includes('Saved') ?? false,
      '#fw-title ~ form p.error',
    ).catch(async (err: unknown) => {
      const form = await page.$eval('#fw-title ~ form', (f) => f.textContent);
      const log = logLines.filter((l) => l.includes('/firewall')).slice(-5);
      throw new Error(`${String(err)}; the form: ${form}; the server: ${log.join(' | ')}`);
    });
    const fw = (await t.api.get(`/v1/vms/${vmId}`)).body.firewall;
    expect(fw).toEqual({
      mode: 'restricted',
      ingress: [
        { protocol: 'tcp', portStart: 8080, portEnd: 8090, sourceCidrs: ['2001:db8::/32'] },
      ],
    });
    await shot('vm', true);
  });

  let snapshotId = '';

  it('snapshots the VM and restores 3 from the snapshot page', async () => {
    await page.type('input[name=snapshot-name]', 'console-snap');
    await page.click('form[aria-label="Take a snapshot"] button[type=submit]');
    await waitOrError(
      () => location.pathname.startsWith('/snapshots/'),
      'form[aria-label="Take a snapshot"] [role=alert]',
    );
    snapshotId = (await page.evaluate(() => location.pathname)).split('/')[2] as string;
    await waitText('#snapshot-title', 'console-snap');
    await page.waitForSelector('svg.lineage .node.selected');

    const count = await page.$('input[name=fork-count]');
    await count!.click({ count: 3 });
    await page.keyboard.press('Backspace');
    await count!.type('3');
    await page.click('form[aria-label="Restore VMs from this snapshot"] button[type=submit]');
    await waitOrError(
      () => document.querySelectorAll('.forked li .status-running').length === 3,
      'form[aria-label="Restore VMs from this snapshot"] ~ [role=alert]',
    );
    const forks = (await vmIds()).filter((id) => id !== vmId);
    expect(forks).toHaveLength(3);
    for (const id of forks) {
      expect((await t.api.get(`/v1/vms/${id}`)).body.sourceSnapshotId).toBe(snapshotId);
    }
    // The lineage tree shows the source VM, the snapshot and its three VMs.
    await page.waitForFunction(
      () => document.querySelectorAll('svg.lineage .node.vm').length === 4,
    );
    await shot('snapshots');
  });

  it('lists the restored VMs and deletes them with confirmation', async () => {
    await page.click('nav a[href="/"]');
    const forks = (await vmIds()).filter((id) => id !== vmId);
    for (const id of forks) await page.waitForSelector(`tr[data-vm-id="${id}"]`);
    await shot('vms');
    // Switching to a touch screen reloads the page.
    const allRows = () =>
      page.waitForFunction(
        (ids: string[]) => ids.every((id) => document.querySelector(`tr[data-vm-id="${id}"]`)),
        {},
        forks,
      );
    await page.setViewport(PHONE);
    await allRows();
    await shot('vms-phone');
    await page.setViewport(DESKTOP);
    await allRows();

    for (const id of forks) {
      await page.click(`tr[data-vm-id="${id}"] button.danger`);
      const confirm = await page.waitForSelector('dialog[open] button.danger');
      await confirm!.click();
      await page.waitForSelector(`tr[data-vm-id="${id}"]`, { hidden: true });
    }
    expect(await vmIds()).toEqual([vmId]);
  });

  it('shows quotas, and builds/imports/volumes only where the server lists them', async () => {
    await page.click('nav a[href="/org"]');
    await page.waitForSelector('.gauge');
    const labels = await page.$$eval('.gauge figcaption strong', (e) =>
      e.map((x) => x.textContent),
    );
    const quotas = (await t.api.get('/v1/org/quotas')).body;
    expect(labels).toEqual([
      'vCPUs',
      'Memory',
      'Disk',
      'Snapshots',
      ...(quotas.limits.volumeCount > 0 ? ['Volumes'] : []),
      ...(quotas.limits.volumeGiB > 0 ? ['Volume storage'] : []),
    ]);
    // One running c1m2 VM and one snapshot.
    await waitText('.gauge figcaption', '1 / ');
    // Builds, imports and volumes: a section exactly where the server lists them.
    const listed: string[] = [];
    for (const p of ['/v1/builds', '/v1/snapshot-imports', '/v1/volumes']) {
      const res = await t.api.get(p);
      if (res.status === 200 && Array.isArray(res.body)) listed.push(p);
      else expect([404, 501], p).toContain(res.status);
    }
    await page.waitForFunction(
      (n: number) => document.querySelectorAll('[data-section]').length === n,
      {},
      listed.length,
    );
    await new Promise((r) => setTimeout(r, 500));
    const sections = await page.$$eval('[data-section]', (e) =>
      e.map((x) => x.getAttribute('data-section')),
    );
    expect(sections).toEqual(listed);
    await shot('org');

    // Keyboard: from the top of the (reloaded) page, Tab reaches the skip link, then the
    // navigation; Enter follows a link.
    await page.reload();
    await page.waitForSelector('.gauge');
    const focused: string[] = [];
    for (let i = 0; i < 4; i++) {
      await page.keyboard.press('Tab');
      focused.push(await page.evaluate(() => document.activeElement?.textContent?.trim() ?? ''));
    }
    expect(focused).toEqual(['Skip to content', 'FastVM', 'VMs', 'Snapshots']);
    await page.keyboard.press('Enter');
    await page.waitForSelector('#snapshots-title');
  });

  it('made no third-party request and never put the key in a URL or a log line', () => {
    const key = t.server.bootstrapKey;
    const origin = new URL(base);
    const wsOrigin = `ws://${origin.host}/`;
    expect(requested.length).toBeGreaterThan(10);
    for (const url of requested) {
      expect(url.startsWith(base + '/') || url.startsWith(wsOrigin), url).toBe(true);
      expect(url).not.toContain(key);
    }
    expect(requested.some((u) => u.startsWith(wsOrigin) && u.includes('session='))).toBe(true);
    expect(logLines.length).toBeGreaterThan(10);
    for (const line of logLines) expect(line).not.toContain(key);
    expect(pageErrors).toEqual([]);
  });
});
