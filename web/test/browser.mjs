// The browser tests: wgtune's page in headless Chromium (its WebGPU software adapter), driven over the DevTools
// protocol with puppeteer-core. Run by `scripts/web.sh test` after `scripts/web.sh build` and `cargo build
// --release` (the native predictions the page is compared with).
//
// 1. Without WebGPU the page says so (Chromium without --enable-unsafe-webgpu has no adapter).
// 2. The kernel checks (web/src/checks.rs) pass on the browser's adapter: every WGSL family compiles there, and
//    matmul, convolution, depthwise convolution and max pooling match the f64 references.
// 3. The whole job as a user does it: the sample data (2 classes x 16 training images), EfficientNet-Lite0 at 32 px,
//    1 frozen + 1 unfrozen epoch; the epoch table, loss curve and confusion matrix appear, the loss is finite and
//    falls; the model is downloaded; the page classifies the validation images, and native `wgtune predict` on the
//    downloaded model gives the same top-1 classes and probabilities within 1e-4.
// 4. Stop ends a run after the current batch; the model trained so far is validated and can be downloaded.
//
// Environment: CHROMIUM (default /usr/bin/chromium); WGTUNE_SCREENSHOT=PATH saves the page after the job.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launch, openPage, ROOT, sampleJob, serve } from './harness.mjs';

const WGTUNE = path.join(ROOT, 'target/release/wgtune');
const MINUTES = 60_000;

const results = [];
async function test(name, body) {
  const t0 = Date.now();
  process.stdout.write(`test ${name} ... `);
  try {
    await body();
    const s = ((Date.now() - t0) / 1000).toFixed(1);
    console.log(`ok (${s} s)`);
    results.push([name, true]);
  } catch (e) {
    console.log('FAILED');
    console.log(e.stack || e);
    results.push([name, false]);
  }
}

const { server, url } = await serve();
try {
  await test('without WebGPU the page says so', async () => {
    const browser = await launch(false);
    try {
      const page = await openPage(browser, url);
      const phase = await page.evaluate(() => window.wgtune.phase);
      const text = await page.$eval('#adapter', (el) => el.textContent);
      assert.equal(phase, 'no-webgpu');
      assert.match(text, /WebGPU but gives no adapter/);
      console.log(`\n  the page says: ${text}`);
    } finally {
      await browser.close();
    }
  });

  const browser = await launch(true);
  try {
    const page = await openPage(browser, url);
    const adapter = await page.evaluate(() => window.wgtune.adapter);
    console.log(`browser adapter: ${JSON.stringify(adapter)}`);

    await test('kernel checks pass on the browser adapter', async () => {
      const checks = JSON.parse(await page.evaluate(() => window.wgtune.engine.kernel_checks()));
      for (const c of checks) {
        const err = c.tolerance > 0 ? ` max error ${c.max_error.toExponential(2)} (tolerance ${c.tolerance.toExponential(2)})` : '';
        console.log(`\n  ${c.ok ? 'ok  ' : 'FAIL'} ${c.kernel} ${c.shape}${err}`);
      }
      assert.ok(checks.length >= 20, `only ${checks.length} checks ran`);
      assert.deepEqual(checks.filter((c) => !c.ok), []);
    });

    await test('fine-tune, download, and predict as native wgtune does', async () => {
      const classes = await sampleJob(page, { classes: 2, perClass: 16, freezeEpochs: 1, epochs: 1, bs: 8, size: 32 });
      assert.deepEqual(classes, [['Ankle_boot', '16', '4', '0'], ['Bag', '16', '4', '0']]);
      const s = await page.evaluate(() => ({
        phase: window.wgtune.phase,
        error: window.wgtune.error,
        records: window.wgtune.records,
        losses: window.wgtune.losses,
        confusion: window.wgtune.confusion,
        confusionDrawn: window.wgtune.confusionDrawn,
      }));
      assert.equal(s.phase, 'done', `the run failed: ${s.error}`);
      for (const r of s.records) {
        console.log(`\n  ${r.phase} epoch ${r.epoch}: train_loss ${r.train_loss.toFixed(4)} valid_loss ` +
          `${r.valid_loss.toFixed(4)} accuracy ${r.accuracy.toFixed(4)} (${r.seconds.toFixed(1)} s)`);
      }
      assert.equal(s.records.length, 2);
      assert.equal(s.losses.length, 8, '4 batches of 8 per epoch, 2 epochs');
      assert.ok(s.losses.every((l) => Number.isFinite(l.loss) && Number.isFinite(l.smooth)), 'a loss is not finite');
      // Over the frozen epoch (the unfrozen one starts a new smoothing, and unfreezing at batch 8 and 32 px jolts
      // the loss up natively too).
      assert.ok(s.losses[3].smooth < s.losses[0].loss,
        `the smoothed loss did not fall in the frozen epoch: ${s.losses[0].loss} -> ${s.losses[3].smooth}`);
      // What a user sees: the epoch table, a drawn loss curve, the confusion matrix of all 8 validation images.
      assert.equal(await page.$$eval('#epochs-table tbody tr', (r) => r.length), 2);
      const inked = await page.$eval('#loss-chart', (c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) n += d[i] > 0 ? 1 : 0;
        return n;
      });
      assert.ok(inked > 1000, `the loss chart is blank (${inked} pixels drawn)`);
      assert.equal(s.confusion.counts.reduce((a, b) => a + b, 0), 8);
      assert.equal(s.confusionDrawn, 2, 'the confusion matrix is drawn after each epoch');
      assert.equal(await page.$$eval('#confusion table tr', (r) => r.length), 3);

      // Download the model as a user does: the button, into a folder.
      const downloads = fs.mkdtempSync(path.join(os.tmpdir(), 'wgtune-web-'));
      const cdp = await page.createCDPSession();
      await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: downloads });
      await page.click('#download-button');
      const model = path.join(downloads, 'wgtune-model.safetensors');
      for (let i = 0; i < 600 && !fs.existsSync(model); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(fs.existsSync(model), 'the model was not downloaded');
      console.log(`\n  downloaded ${model} (${(fs.statSync(model).size / 1e6).toFixed(1)} MB)`);

      // The same images in a folder, fine-tuned natively with the same settings: the frozen epoch (seeded
      // augmentation and order, the body's running statistics still ImageNet's) agrees up to float rounding order.
      const sample = JSON.parse(fs.readFileSync(path.join(ROOT, 'web/pkg/sample.json'), 'utf8'));
      const pick = (split, n) => ['Ankle_boot', 'Bag'].flatMap((c) =>
        sample.files[split][c].slice(0, n).map((f) => [split, c, f]));
      const folder = path.join(downloads, 'data');
      for (const [split, c, f] of [...pick('train', 16), ...pick('valid', 4)]) {
        fs.mkdirSync(path.join(folder, split, c), { recursive: true });
        fs.copyFileSync(path.join(ROOT, sample.root, split, c, f), path.join(folder, split, c, f));
      }
      const log = path.join(downloads, 'native.json');
      const run = spawnSync(WGTUNE, ['finetune', '--data', folder, '--size', '32', '--bs', '8', '--freeze-epochs', '1',
        '--epochs', '1', '--out', path.join(downloads, 'native.safetensors'), '--json-log', log], { encoding: 'utf8' });
      assert.equal(run.status, 0, `native wgtune finetune failed: ${run.stderr}`);
      const nativeFrozen = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l))[0];
      const pageFrozen = s.records[0];
      console.log(`\n  frozen epoch natively: train_loss ${nativeFrozen.train_loss.toFixed(4)} valid_loss ` +
        `${nativeFrozen.valid_loss.toFixed(4)} accuracy ${nativeFrozen.accuracy.toFixed(4)}`);
      assert.ok(Math.abs(pageFrozen.train_loss - nativeFrozen.train_loss) < 0.02, 'frozen train_loss differs from native');
      assert.ok(Math.abs(pageFrozen.valid_loss - nativeFrozen.valid_loss) < 0.02, 'frozen valid_loss differs from native');

      // The page classifies the validation images; native wgtune predicts them with the downloaded model.
      const images = pick('valid', 4).map(([split, c, f]) => path.join(ROOT, sample.root, split, c, f));
      const input = await page.$('#predict-input');
      await input.uploadFile(...images);
      await page.waitForFunction((n) => window.wgtune.predictions.length === n, { timeout: 5 * MINUTES }, images.length);
      const fromPage = await page.evaluate(() => window.wgtune.predictions);
      const native = spawnSync(WGTUNE, ['predict', '--model', model, '--json', ...images], { encoding: 'utf8' });
      assert.equal(native.status, 0, `wgtune predict failed: ${native.stderr}`);
      const lines = native.stdout.trim().split('\n').map((l) => JSON.parse(l));
      assert.equal(lines.length, images.length);
      let worst = 0;
      for (const [i, line] of lines.entries()) {
        const p = fromPage.find((x) => x.file === path.basename(images[i]));
        assert.ok(p, `the page has no prediction for ${images[i]}`);
        assert.equal(p.top[0].label, line.top[0].label, `top-1 of ${images[i]}`);
        for (const t of line.top) worst = Math.max(worst, Math.abs(p.probs[t.class_index] - t.prob));
      }
      console.log(`\n  ${lines.length} images: same top-1 classes in the page and natively; largest probability ` +
        `difference ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-4, `probabilities differ by ${worst}`);
      if (process.env.WGTUNE_SCREENSHOT) {
        await page.screenshot({ path: process.env.WGTUNE_SCREENSHOT, fullPage: true });
        console.log(`\n  screenshot: ${process.env.WGTUNE_SCREENSHOT}`);
      }
      fs.rmSync(downloads, { recursive: true, force: true });
    });

    await test('Stop ends a run after the current batch and keeps what it trained', async () => {
      // Batches of 4: 8 steps an epoch, so that Stop lands inside the first one (steps already submitted finish).
      await page.$eval('#epochs', (el) => { el.value = '3'; });
      await page.$eval('#bs', (el) => { el.value = '4'; });
      await page.click('#start-button');
      await page.waitForFunction(() => document.querySelector('#progress').value >= 1, { timeout: 10 * MINUTES });
      // The button's own click handler, in one DevTools round trip (a synthesized mouse click takes several, and the
      // renderer answers slowly while the software adapter has both cores).
      await page.$eval('#stop-button', (b) => b.click());
      await page.waitForFunction(() => ['done', 'failed'].includes(window.wgtune.phase), { timeout: 10 * MINUTES });
      const s = await page.evaluate(() => ({ phase: window.wgtune.phase, error: window.wgtune.error,
        records: window.wgtune.records.length, confusion: window.wgtune.confusion }));
      const status = await page.$eval('#status', (el) => el.textContent);
      console.log(`\n  the page says: ${status}`);
      assert.equal(s.phase, 'done');
      assert.match(s.error, /^interrupted in frozen epoch 0 after [1-7] of 8 batches/);
      assert.equal(s.records, 0);
      assert.equal(s.confusion.counts.reduce((a, b) => a + b, 0), 8, 'the stopped model was validated');
      assert.equal(await page.$eval('#download-button', (b) => b.disabled), false);
    });
  } finally {
    await browser.close();
  }
} finally {
  server.kill();
}

const failed = results.filter(([, ok]) => !ok);
console.log(`\nbrowser tests: ${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
