// wgtune's page: images in, fastai's fine_tune on the page's WebGPU adapter, the epoch table, loss curve and
// confusion matrix live, the model out. The engine is wgtune itself compiled to WebAssembly (pkg/, made by
// `scripts/web.sh build`); this file only moves bytes and draws.

import init, { Engine } from './pkg/wgtune_web.js';

const $ = (id) => document.getElementById(id);
const IMAGE = /\.(jpe?g|png|webp|bmp|gif)$/i;
const DEFAULT_WEIGHTS = '../assets/efficientnet_lite0.safetensors';

// What the page has done, kept where people (and the browser tests) can read it: window.wgtune.
const state = {
  phase: 'loading', // loading | no-webgpu | ready | training | done | failed
  adapter: null,
  engine: null,
  weightsLoaded: null,
  records: [],
  losses: [],
  confusion: null,
  confusionDrawn: 0,
  predictions: [],
  error: null,
  modelBytes: 0,
};
window.wgtune = state;

function setStatus(text, isError = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('error', isError);
}

function mmss(seconds) {
  const s = Math.round(seconds);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

// ---- images ----

// A file's class and split from its path below the chosen folder: the class is the folder holding it, and a
// `train` or `valid` folder above that decides the split (none: the random split).
function labelOf(path) {
  const parts = path.split('/').filter((p) => p.length > 0);
  if (parts.length < 2) return null;
  const label = parts[parts.length - 2];
  const above = parts.slice(0, -2).map((p) => p.toLowerCase());
  let valid;
  if (above.includes('valid') || above.includes('val')) valid = true;
  else if (above.includes('train')) valid = false;
  return { label, valid };
}

async function addFiles(entries) {
  const usable = entries.filter((e) => IMAGE.test(e.path) && labelOf(e.path));
  if (usable.length === 0) {
    setStatus('No images in folders found there: put each class in a folder of its own.', true);
    return;
  }
  state.engine.clear_images();
  let done = 0;
  for (const { path, file } of usable) {
    const { label, valid } = labelOf(path);
    const bytes = new Uint8Array(await file.arrayBuffer());
    state.engine.add_image(bytes, path, label, valid);
    if (++done % 100 === 0) setStatus(`Reading images: ${done} of ${usable.length}`);
  }
  showClasses();
  setStatus(`${usable.length} images. Set the options and press Start.`);
}

function showClasses() {
  const rows = JSON.parse(state.engine.classes());
  const body = $('classes').querySelector('tbody');
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement('tr');
      for (const v of [r.name, r.train, r.valid, r.unassigned]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      return tr;
    }),
  );
  $('start-button').disabled = rows.length < 2 || state.phase === 'training';
  if (rows.length < 2 && rows.length > 0) setStatus('A classifier needs at least two classes (folders).', true);
}

// Files below a dropped folder, with their paths (the File and Directory Entries API).
async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ path: prefix + entry.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (batch.length === 0) break;
      for (const child of batch) await walk(child, `${prefix}${entry.name}/`, out);
    }
  }
}

async function droppedFiles(event) {
  const out = [];
  const entries = [...event.dataTransfer.items].map((i) => i.webkitGetAsEntry()).filter(Boolean);
  for (const e of entries) await walk(e, '', out);
  return out;
}

function dropZone(el, handle) {
  el.addEventListener('dragover', (e) => {
    e.preventDefault();
    el.classList.add('over');
  });
  el.addEventListener('dragleave', () => el.classList.remove('over'));
  el.addEventListener('drop', async (e) => {
    e.preventDefault();
    el.classList.remove('over');
    await handle(e);
  });
}

// The bundled sample: the first `classes` Fashion-MNIST classes, `perClass` training images of each and a quarter
// as many validation images (pkg/sample.json lists the files).
async function useSample() {
  const classes = Number($('sample-classes').value);
  const perClass = Number($('sample-per-class').value);
  const sample = await (await fetch('pkg/sample.json')).json();
  const names = Object.keys(sample.files.train).sort().slice(0, classes);
  const wanted = [];
  for (const split of ['train', 'valid']) {
    const n = split === 'train' ? perClass : Math.max(1, Math.ceil(perClass / 4));
    for (const c of names) {
      for (const f of sample.files[split][c].slice(0, n)) wanted.push(`${split}/${c}/${f}`);
    }
  }
  setStatus(`Fetching ${wanted.length} sample images…`);
  const entries = [];
  for (const path of wanted) {
    const blob = await (await fetch(`..${sample.root}/${path}`)).blob();
    entries.push({ path: `fashion_mnist/${path}`, file: new File([blob], path.split('/').pop()) });
  }
  await addFiles(entries);
}

// ---- weights ----

async function loadWeights() {
  const choice = $('weights-choice').value;
  if (choice === 'default') {
    if (state.weightsLoaded === DEFAULT_WEIGHTS) return;
    setStatus('Fetching the EfficientNet-Lite0 weights (19 MB)…');
    const response = await fetch(DEFAULT_WEIGHTS);
    if (!response.ok) throw new Error(`cannot fetch ${DEFAULT_WEIGHTS}: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    showWeights(state.engine.set_weights(bytes, 'EfficientNet-Lite0 (ImageNet)'));
    state.weightsLoaded = DEFAULT_WEIGHTS;
  } else if (state.weightsLoaded === null || state.weightsLoaded === DEFAULT_WEIGHTS) {
    throw new Error('choose a safetensors file first');
  }
}

function showWeights(json) {
  const w = JSON.parse(json);
  $('weights-info').textContent = `${w.origin}: ${w.architecture}` +
    (w.classes.length ? ` (a wgtune model of ${w.classes.length} classes)` : '');
}

// ---- training ----

let chart = null;

function makeChart() {
  if (chart) chart.destroy();
  chart = new Chart($('loss-chart'), {
    type: 'line',
    data: {
      datasets: [
        { label: 'train (smoothed)', data: [], borderColor: '#1f77b4', pointRadius: 0, borderWidth: 1.5 },
        { label: 'valid', data: [], borderColor: '#ff7f0e', pointRadius: 3 },
      ],
    },
    options: {
      animation: false,
      parsing: false,
      responsive: false,
      scales: {
        x: { type: 'linear', title: { display: true, text: 'batches processed' } },
        y: { title: { display: true, text: 'loss' } },
      },
    },
  });
}

function addEpochRow(r) {
  const tr = document.createElement('tr');
  const cells = [r.epoch, r.phase, r.train_loss.toFixed(6), r.valid_loss.toFixed(6), r.accuracy.toFixed(6),
    r.error_rate.toFixed(6), mmss(r.seconds)];
  for (const v of cells) {
    const td = document.createElement('td');
    td.textContent = v;
    tr.append(td);
  }
  $('epochs-table').querySelector('tbody').append(tr);
}

async function start() {
  state.phase = 'training';
  state.error = null;
  state.records = [];
  state.losses = [];
  state.confusion = null;
  $('start-button').disabled = true;
  $('stop-button').disabled = false;
  $('download-button').disabled = true;
  $('epochs-table').querySelector('tbody').replaceChildren();
  $('progress').value = 0;
  $('progress-text').textContent = '';
  $('confusion').replaceChildren();
  $('most-confused').textContent = '';
  makeChart();
  const config = {
    freeze_epochs: Number($('freeze-epochs').value),
    epochs: Number($('epochs').value),
    lr: Number($('lr').value),
    bs: Number($('bs').value),
    size: Number($('size').value),
  };
  let step = 0;
  let stopped = false;
  try {
    await loadWeights();
    setStatus('Compiling kernels and training…');
    const onProgress = (phase, epoch, done, total, smooth) => {
      step += 1;
      $('progress').max = total;
      $('progress').value = done;
      $('progress-text').textContent = `${phase} epoch ${epoch}: batch ${done} of ${total}, loss ${smooth.toFixed(4)}`;
      chart.data.datasets[0].data.push({ x: step, y: smooth });
      chart.update('none');
    };
    const onEpoch = (json) => {
      const { record: r, classes, confusion } = JSON.parse(json);
      state.records.push(r);
      addEpochRow(r);
      chart.data.datasets[1].data.push({ x: step, y: r.valid_loss });
      chart.update('none');
      if (confusion) showConfusion({ classes, counts: confusion });
    };
    const out = JSON.parse(await state.engine.fine_tune(JSON.stringify(config), onProgress, onEpoch));
    state.losses = out.losses;
  } catch (e) {
    const message = String(e.message ?? e);
    stopped = message.startsWith('interrupted');
    state.error = message;
    setStatus(message, !stopped);
    if (!stopped) {
      state.phase = 'failed';
      $('start-button').disabled = false;
      $('stop-button').disabled = true;
      return;
    }
  }
  $('stop-button').disabled = true;
  // A stopped run is validated as it stands; a finished one shows its last epoch's matrix already.
  if (stopped || !state.confusion) showConfusion(JSON.parse(await state.engine.validate()));
  $('download-button').disabled = false;
  $('start-button').disabled = false;
  if (!stopped) setStatus(`Done: accuracy ${(state.confusion.accuracy * 100).toFixed(1)}% on the validation set.`);
  state.phase = 'done';
}

// The validation confusion matrix ({classes, counts: row-major, actual by predicted}) as a shaded table, and
// fastai's most_confused: the off-diagonal cells, largest first.
function showConfusion({ classes, counts }) {
  if (!counts) return;
  const k = classes.length;
  const total = counts.reduce((a, b) => a + b, 0);
  const right = classes.reduce((sum, _, i) => sum + counts[i * k + i], 0);
  state.confusion = { classes, counts, accuracy: total ? right / total : 0 };
  state.confusionDrawn += 1;
  const max = Math.max(1, ...counts);
  const table = document.createElement('table');
  table.className = 'confusion';
  const head = document.createElement('tr');
  head.append(Object.assign(document.createElement('th'), { textContent: 'actual \\ predicted' }));
  for (const name of classes) head.append(Object.assign(document.createElement('th'), { textContent: name }));
  table.append(head);
  const confused = [];
  for (let a = 0; a < k; a++) {
    const tr = document.createElement('tr');
    tr.append(Object.assign(document.createElement('th'), { textContent: classes[a] }));
    for (let p = 0; p < k; p++) {
      const n = counts[a * k + p];
      if (a !== p && n > 0) confused.push([classes[a], classes[p], n]);
      const td = Object.assign(document.createElement('td'), { textContent: n });
      td.style.background = `rgba(31, 119, 180, ${(n / max).toFixed(3)})`;
      if (n / max > 0.5) td.style.color = 'white';
      tr.append(td);
    }
    table.append(tr);
  }
  $('confusion').replaceChildren(table);
  confused.sort((x, y) => y[2] - x[2]);
  const worst = confused.slice(0, 5).map(([a, p, n]) => `${a} → ${p}: ${n}`);
  $('most-confused').textContent = worst.length ? `Most confused: ${worst.join('; ')}` : 'No confusions.';
}

async function download() {
  const bytes = await state.engine.export_model();
  state.modelBytes = bytes.length;
  const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  const a = Object.assign(document.createElement('a'), { href: url, download: 'wgtune-model.safetensors' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- prediction ----

async function classify(files) {
  for (const file of files) {
    if (!IMAGE.test(file.name)) continue;
    const card = document.createElement('div');
    card.className = 'prediction';
    const img = Object.assign(document.createElement('img'), { src: URL.createObjectURL(file), alt: file.name });
    const text = document.createElement('div');
    card.append(img, text);
    $('predictions').prepend(card);
    try {
      const p = JSON.parse(await state.engine.predict(new Uint8Array(await file.arrayBuffer()), file.name));
      state.predictions.push(p);
      text.innerHTML = '';
      text.append(Object.assign(document.createElement('strong'), { textContent: file.name }));
      for (const t of p.top.slice(0, 3)) {
        text.append(Object.assign(document.createElement('div'), {
          textContent: `${(t.prob * 100).toFixed(2)}%  ${t.label}`,
        }));
      }
    } catch (e) {
      text.textContent = `${file.name}: ${e.message ?? e}`;
      text.classList.add('error');
    }
  }
}

// ---- start-up ----

async function main() {
  if (!navigator.gpu) {
    state.phase = 'no-webgpu';
    $('adapter').textContent = 'This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome or Edge, ' +
      'Safari 26, or Firefox with WebGPU on; on Linux, Chrome may need chrome://flags/#enable-unsafe-webgpu.';
    $('adapter').classList.add('error');
    return;
  }
  await init();
  try {
    state.engine = await Engine.create();
  } catch (e) {
    state.phase = 'no-webgpu';
    const adapter = await navigator.gpu.requestAdapter().catch(() => null);
    $('adapter').textContent = adapter === null
      ? 'This browser has WebGPU but gives no adapter: it is off or blocked for this GPU or driver (Chromium on ' +
        'Linux: start it with --enable-unsafe-webgpu, or turn on chrome://flags/#enable-unsafe-webgpu).'
      : `WebGPU could not start wgtune's device: ${e.message ?? e}`;
    $('adapter').classList.add('error');
    return;
  }
  const a = JSON.parse(state.engine.adapter());
  state.adapter = a;
  // wgpu's WebGPU backend has no adapter name; the browser's GPUAdapterInfo says what it can.
  const info = (await navigator.gpu.requestAdapter().catch(() => null))?.info;
  const described = info && [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
  const name = a.name || described || 'unnamed adapter';
  state.adapter.described = name;
  $('adapter').textContent = `WebGPU adapter: ${name} (${a.device_type}${a.is_software ? ', software: correct but slow' : ''})` +
    ` · shader-f16: ${a.shader_f16 ? 'yes' : 'no'} · largest storage binding ${Math.round(a.max_storage_binding / 2 ** 20)} MiB`;

  const guard = (f) => async (...args) => {
    try {
      await f(...args);
    } catch (e) {
      state.error = String(e.message ?? e);
      setStatus(state.error, true);
    }
  };
  $('folder-input').addEventListener('change', guard((e) =>
    addFiles([...e.target.files].map((file) => ({ path: file.webkitRelativePath || file.name, file })))));
  dropZone($('drop-zone'), guard(async (e) => addFiles(await droppedFiles(e))));
  $('sample-button').addEventListener('click', guard(useSample));
  $('weights-choice').addEventListener('change', () => {
    if ($('weights-choice').value === 'file') $('weights-file').click();
  });
  $('weights-file').addEventListener('change', guard(async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    showWeights(state.engine.set_weights(new Uint8Array(await file.arrayBuffer()), file.name));
    state.weightsLoaded = file.name;
  }));
  $('start-button').addEventListener('click', guard(start));
  $('stop-button').addEventListener('click', () => {
    state.engine.stop();
    setStatus('Stopping after this batch…');
  });
  $('download-button').addEventListener('click', guard(download));
  $('predict-input').addEventListener('change', guard((e) => classify([...e.target.files])));
  dropZone($('predict-drop'), guard(async (e) => classify([...e.dataTransfer.files])));
  makeChart();
  state.phase = 'ready';
}

main().catch((e) => {
  state.phase = 'failed';
  state.error = String(e.message ?? e);
  setStatus(state.error, true);
});
