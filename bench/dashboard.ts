/// <reference lib="dom" />
/**
 * The web console in headless Chromium (issue 21) against a FakeRuntime server in a child
 * process (`api-server.ts`), so the figures are the console's and the HTTP stack's, not QEMU's:
 * - `dash_load_cold`: a new browser context (empty cache), signed in, navigation to `/` until the
 *   VM table shows all VMs; `dash_load_warm`: the same after a reload (assets cached, immutable);
 *   `dash_blank`: navigation to `/healthz` in the same context, the floor of a page load;
 * - `dash_exec`: Enter on the exec form until the streamed output and exit line show;
 *   `dash_exec_fetch`: the same NDJSON exec by `fetch` from the page, no UI (the baseline).
 */
import fs from 'node:fs';
import puppeteer, { type Page } from 'puppeteer-core';
import { now } from './sys.js';

export const CHROMIUM = process.env.FASTVM_CHROMIUM ?? '/usr/bin/chromium';

export interface DashboardSamples {
  cold: number[];
  warm: number[];
  blank: number[];
  exec: number[];
  execFetch: number[];
  /** Bytes of the built JS and CSS the page loads. */
  assetKiB: number;
}

export function dashboardUnavailable(): string | undefined {
  return fs.existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (apt: chromium)`;
}

async function signedIn(page: Page, key: string): Promise<void> {
  await page.evaluateOnNewDocument((k: string) => {
    sessionStorage.setItem('fastvm.apiKey', k);
  }, key);
}

export async function dashboardBench(
  url: string,
  key: string,
  vmIds: readonly string[],
  samples: number,
): Promise<DashboardSamples> {
  const out: DashboardSamples = {
    cold: [],
    warm: [],
    blank: [],
    exec: [],
    execFetch: [],
    assetKiB: 0,
  };
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-sync'],
  });
  try {
    const allShown = (page: Page) =>
      page.waitForFunction(
        (n: number) => document.querySelectorAll('tr[data-vm-id]').length === n,
        { timeout: 60_000 },
        vmIds.length,
      );
    // One unmeasured round first: Chromium's own start-up costs are not the console's.
    for (let i = 0; i <= samples; i++) {
      const context = await browser.createBrowserContext();
      const page = await context.newPage();
      await page.setViewport({ width: 1280, height: 800 });
      await signedIn(page, key);
      let bytes = 0;
      let counting = true;
      page.on('response', (r) => {
        if (counting && r.url().includes('/assets/')) {
          bytes += Number(r.headers()['content-length'] ?? 0);
        }
      });
      let t0 = now();
      await page.goto(`${url}/`);
      await allShown(page);
      const cold = now() - t0;
      counting = false;
      t0 = now();
      await page.reload();
      await allShown(page);
      const warm = now() - t0;
      t0 = now();
      await page.goto(`${url}/healthz`);
      const blank = now() - t0;
      if (i > 0) {
        out.cold.push(cold);
        out.warm.push(warm);
        out.blank.push(blank);
      }
      out.assetKiB = bytes / 1024;
      await context.close();
    }

    const page = await browser.newPage();
    await signedIn(page, key);
    await page.goto(`${url}/vms/${vmIds[0]}`);
    await page.waitForSelector('input[name=command]:not([disabled])', { timeout: 60_000 });
    for (let i = 0; i <= samples; i++) {
      const marker = `m${i}`;
      await page.$eval('input[name=command]', (e) => ((e as HTMLInputElement).value = ''));
      await page.type('input[name=command]', `echo ${marker}`);
      const t0 = now();
      await page.keyboard.press('Enter');
      await page.waitForFunction(
        (m: string) =>
          document.querySelector('pre.output')?.textContent === `${m}\n` &&
          document.querySelector('.exec-status')?.textContent?.startsWith('exit 0'),
        { timeout: 60_000 },
        marker,
      );
      const ui = now() - t0;
      const direct = await page.evaluate(
        async (id: string, k: string, m: string) => {
          const s = performance.now();
          const res = await fetch(`/v1/vms/${id}/exec`, {
            method: 'POST',
            headers: {
              'x-api-key': k,
              accept: 'application/x-ndjson',
              'content-type': 'application/json',
            },
            body: JSON.stringify({ command: ['sh', '-c', `echo ${m}`] }),
          });
          const text = await res.text();
          if (!text.includes('"t":"x"')) throw new Error(`exec: ${res.status} ${text}`);
          return performance.now() - s;
        },
        vmIds[0] as string,
        key,
        marker,
      );
      if (i > 0) {
        out.exec.push(ui);
        out.execFetch.push(direct);
      }
    }
  } finally {
    await browser.close();
  }
  return out;
}
