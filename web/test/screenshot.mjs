// The README's picture of the page (docs/web-page.png): a fine-tune on 4 sample classes in headless Chromium, then
// some validation images classified. Usage: node web/test/screenshot.mjs [OUT.png] (after `scripts/web.sh build`).

import path from 'node:path';
import fs from 'node:fs';
import { launch, openPage, ROOT, sampleJob, serve } from './harness.mjs';

const out = process.argv[2] || path.join(ROOT, 'docs/web-page.png');
const { server, url } = await serve();
const browser = await launch(true);
try {
  const page = await openPage(browser, url);
  await sampleJob(page, { classes: 4, perClass: 48, freezeEpochs: 1, epochs: 2, bs: 16, size: 32 });
  const state = await page.evaluate(() => ({ phase: window.wgtune.phase, error: window.wgtune.error }));
  if (state.phase !== 'done') throw new Error(`the run failed: ${state.error}`);
  const sample = JSON.parse(fs.readFileSync(path.join(ROOT, 'web/pkg/sample.json'), 'utf8'));
  const classes = Object.keys(sample.files.valid).sort().slice(0, 4);
  const images = classes.flatMap((c) =>
    sample.files.valid[c].slice(20, 22).map((f) => path.join(ROOT, sample.root, 'valid', c, f)));
  await (await page.$('#predict-input')).uploadFile(...images);
  await page.waitForFunction((n) => window.wgtune.predictions.length === n, { timeout: 600_000 }, images.length);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  server.kill();
}
