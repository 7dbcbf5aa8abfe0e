// Training-step time in headless Chromium's WebGPU (software) adapter next to native wgtune on this machine's
// adapter, on the same models, batches and sizes: `wgtune bench train --json` natively, the same measurement
// (wgtune::bench::bench_step) in the page. Prints one JSON line per run and a table. Run by
// `scripts/web.sh bench` (after its build).
//
// Usage: node web/test/bench.mjs [MODEL:BATCH:SIZE ...]   (default small_cnn:8:32 effnet-lite0:8:32
//        effnet-lite0:8:64 resnet18:8:64); STEPS=N (default 5).

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { launch, openPage, ROOT, serve } from './harness.mjs';

const cases = (process.argv.length > 2 ? process.argv.slice(2)
  : ['small_cnn:8:32', 'effnet-lite0:8:32', 'effnet-lite0:8:64', 'resnet18:8:64'])
  .map((c) => {
    const [model, bs, size] = c.split(':');
    return { model, bs: Number(bs), size: Number(size) };
  });
const steps = Number(process.env.STEPS || 5);
const wgtune = path.join(ROOT, 'target/release/wgtune');

const { server, url } = await serve();
const browser = await launch(true);
const rows = [];
try {
  const page = await openPage(browser, url);
  for (const c of cases) {
    const native = spawnSync(wgtune, ['bench', 'train', '--model', c.model, '--bs', String(c.bs), '--size',
      String(c.size), '--steps', String(steps), '--json'], { encoding: 'utf8' });
    if (native.status !== 0) throw new Error(`native bench failed: ${native.stderr}`);
    const n = JSON.parse(native.stdout.trim().split('\n').pop());
    const b = JSON.parse(await page.evaluate((m, bs, size, k) => window.wgtune.engine.bench_train(m, bs, size, k),
      c.model, c.bs, c.size, steps));
    console.log(JSON.stringify({ where: 'native', ...n }));
    console.log(JSON.stringify({ where: 'chromium', ...b }));
    rows.push([c, n, b]);
  }
} finally {
  await browser.close();
  server.kill();
}
console.log('\nmodel               batch  size  native s/step  chromium s/step  chromium/native');
for (const [c, n, b] of rows) {
  const ns = 1 / n.steps_per_s;
  const bs = 1 / b.steps_per_s;
  console.log(`${c.model.padEnd(19)} ${String(c.bs).padStart(5)} ${String(c.size).padStart(5)} ` +
    `${ns.toFixed(3).padStart(14)} ${bs.toFixed(3).padStart(16)} ${(bs / ns).toFixed(2).padStart(16)}`);
}
