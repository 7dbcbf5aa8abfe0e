// What the browser tests and benchmarks share: the static server, headless Chromium with WebGPU, the page.

import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const MINUTES = 60_000;
// Chromium's own flags for a machine without network access, then WebGPU on its software adapter.
const QUIET = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'];

async function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
}

// The static server `scripts/web.sh serve` runs, on a free port; resolves when it answers.
export async function serve() {
  const port = await freePort();
  const server = spawn('python3', ['-m', 'http.server', '--bind', '127.0.0.1', '--directory', ROOT, String(port)], {
    stdio: 'ignore',
  });
  const url = `http://127.0.0.1:${port}/web/`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(url)).ok) return { server, url };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  server.kill();
  throw new Error(`the static server did not answer at ${url}`);
}

export async function launch(webgpu) {
  const args = [...QUIET, ...(webgpu ? ['--enable-unsafe-webgpu'] : [])];
  return puppeteer.launch({ executablePath: CHROMIUM, headless: true, args, protocolTimeout: 30 * MINUTES });
}

export async function openPage(browser, url) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn') console.log(`  [page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`  [page exception] ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.wgtune && window.wgtune.phase !== 'loading', { timeout: 2 * MINUTES });
  return page;
}


// The job as a user runs it on the bundled sample: the settings typed in, "Use the sample data", Start; resolves when
// the page is done (or failed) with the classes table's rows.
export async function sampleJob(page, { classes, perClass, freezeEpochs, epochs, bs, size }) {
  const set = async (id, value) => {
    await page.$eval(id, (el, v) => { el.value = v; }, String(value));
  };
  await set('#sample-classes', classes);
  await set('#sample-per-class', perClass);
  await set('#freeze-epochs', freezeEpochs);
  await set('#epochs', epochs);
  await set('#bs', bs);
  await set('#size', size);
  await page.click('#sample-button');
  await page.waitForFunction((n) => document.querySelectorAll('#classes tbody tr').length === n, { timeout: MINUTES },
    classes);
  const rows = await page.$$eval('#classes tbody tr', (trs) => trs.map((r) => r.innerText.split('\t')));
  await page.click('#start-button');
  await page.waitForFunction(() => ['done', 'failed'].includes(window.wgtune.phase), { timeout: 60 * MINUTES });
  return rows;
}
