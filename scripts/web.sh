#!/usr/bin/env bash
# wgtune in a browser tab (web/): build the engine for WebAssembly + WebGPU, serve the page, run the browser tests.
#
#   scripts/web.sh build         cargo build for wasm32 + wasm-bindgen (installed at the version Cargo.lock pins)
#   scripts/web.sh serve [PORT]  a static server on 127.0.0.1 (default 8080): open http://127.0.0.1:PORT/web/
#   scripts/web.sh test          build, then the headless-Chromium tests (web/test/browser.mjs)
#   scripts/web.sh bench [CASES] build, then training-step time in headless Chromium next to native (web/test/bench.mjs)
set -euo pipefail
cd "$(dirname "$0")/.."

# The wasm-bindgen command line must be exactly the version of the wasm-bindgen crate in Cargo.lock.
bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

build() {
    local want
    want="$(bindgen_version)"
    if [[ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]]; then
        # --force: a wasm-bindgen of another version (or a removed binary cargo still lists) is replaced.
        echo "installing wasm-bindgen-cli $want (a few minutes, once)"
        cargo install wasm-bindgen-cli --version "$want" --force
    fi
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
    # Chart.js (the page's loss curve) and puppeteer-core (the browser tests) from npm, as web/package-lock.json says.
    if [[ ! -d web/node_modules/chart.js || ! -d web/node_modules/puppeteer-core ]]; then
        (cd web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund)
    fi
    cargo build -p wgtune-web --target wasm32-unknown-unknown --release
    wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/wgtune_web.wasm
    cp web/node_modules/chart.js/dist/chart.umd.min.js web/pkg/
    # The bundled sample data the page offers: the embedded Fashion-MNIST subset's files, listed (a static server
    # has no directory listings).
    python3 - <<'PY'
import json, pathlib
root = pathlib.Path("assets/fashion_mnist")
files = {split: {c.name: sorted(f.name for f in c.iterdir()) for c in sorted((root / split).iterdir())}
         for split in ("train", "valid")}
pathlib.Path("web/pkg/sample.json").write_text(json.dumps({"root": "/" + str(root), "files": files}))
PY
    echo "built web/pkg ($(du -h web/pkg/wgtune_web_bg.wasm | cut -f1) of WebAssembly)"
}

serve() {
    local port="${1:-8080}"
    echo "wgtune's page: http://127.0.0.1:$port/web/  (Ctrl-C stops the server)"
    exec python3 -m http.server --bind 127.0.0.1 --directory . "$port"
}

browser_test() {
    local chromium="${CHROMIUM:-/usr/bin/chromium}"
    if [[ ! -x "$chromium" ]]; then
        echo "the browser tests need Chromium: apt-get install chromium (Debian/Ubuntu), or CHROMIUM=/path/to/it" >&2
        exit 1
    fi
    command -v node >/dev/null || { echo "the browser tests need Node.js and npm" >&2; exit 1; }
    build
    cargo build --release
    node web/test/browser.mjs
}

browser_bench() {
    build
    cargo build --release
    shift
    node web/test/bench.mjs "$@"
}

case "${1:-}" in
    build) build ;;
    bench) browser_bench "$@" ;;
    serve) serve "${2:-}" ;;
    test) browser_test ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
esac
