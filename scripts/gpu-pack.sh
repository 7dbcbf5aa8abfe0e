#!/usr/bin/env bash
# Pack what a GPU machine without a Rust toolchain or network needs to test and benchmark this checkout: the
# stripped release binary, the kernel and executor test binaries (stripped, xz-compressed: ~2.3 MB each), the Vulkan
# loader packages, and run.sh, which runs the tests on the GPU and then scripts/gpu-bench.sh.
#
#   scripts/gpu-pack.sh [DIR]          # default DIR: .gpu-pack (git-ignored)
#
# On the GPU machine, from the root of the same checkout (DIR carried along):
#   bash DIR/run.sh [OUT [GPU-BENCH OPTIONS]]   # results in OUT (default bench-results-DATE), and OUT.tgz
#
# The Vulkan packages are fetched with apt-get when this machine has it (amd64, whatever this machine's
# architecture); without them run.sh relies on the GPU machine's own libvulkan. Sizes: the binary ~32 MB (the
# embedded EfficientNet-Lite0 weights), the rest ~5 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$here/.gpu-pack}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cd "$here"

echo "== building (release, with the test binaries)" >&2
cargo build --release
tests_json="$(cargo test --release --no-run --message-format=json 2>/dev/null)"
strip -o "$dir/wgtune" target/release/wgtune
for t in kernels executor; do
    exe="$(printf '%s\n' "$tests_json" | python3 -c "
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get('reason') == 'compiler-artifact' and m.get('target', {}).get('name') == '$t' and m.get('executable'):
        print(m['executable'])" | tail -n 1)"
    [ -n "$exe" ] || { echo "no test binary for tests/$t" >&2; exit 1; }
    strip -o "$dir/$t" "$exe"
    xz -T0 -6 -f "$dir/$t"
done

if command -v apt-get >/dev/null; then
    echo "== the Vulkan loader packages (amd64)" >&2
    mkdir -p "$dir/debs" /tmp/wgtune-apt-amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/wgtune-apt-amd64)
    apt-get "${o[@]}" update >/dev/null
    for package in libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2; do
        ls "$dir/debs/${package}_"*.deb >/dev/null 2>&1 && continue
        (cd "$dir/debs" && apt-get "${o[@]}" download "$package" >/dev/null 2>&1) ||
            echo "warning: could not download $package" >&2
    done
    ls "$dir/debs/libvulkan1_"*.deb >/dev/null 2>&1 || echo "warning: no libvulkan1 package in $dir/debs" >&2
fi

cat >"$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Made by scripts/gpu-pack.sh: the kernel (subgroups, then trees) and executor tests on this machine's GPU, then
# scripts/gpu-bench.sh.
set -uo pipefail
pack="$(cd "$(dirname "$0")" && pwd)"
[ -x scripts/gpu-bench.sh ] || { echo "run this from the repository root (no scripts/gpu-bench.sh here)" >&2; exit 2; }
out="${1:-bench-results-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' && ls "$pack"/debs/*.deb >/dev/null 2>&1; then
    for f in "$pack"/debs/*.deb; do dpkg -x "$f" "$out/.vulkan"; done
    export LD_LIBRARY_PATH="$(find "$out/.vulkan" -name 'libvulkan.so.1' -printf '%h\n' | head -n 1):${LD_LIBRARY_PATH:-}"
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES="$nvidia_icd"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
failed=0
# The kernel tests twice: with the subgroup reductions where the GPU has subgroups, then with the workgroup trees.
for run in kernels kernels:trees executor; do
    t="${run%%:*}"
    [ -x "$out/.$t" ] || { python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read())" \
        "$pack/$t.xz" "$out/.$t" && chmod +x "$out/.$t"; }
    subgroups=on; [ "$run" = kernels:trees ] && subgroups=off
    log="$out/logs/test-${run/:/-}.log"
    t0=$SECONDS
    if WGTUNE_SUBGROUPS=$subgroups timeout -k 5 300 "$out/.$t" --test-threads 8 >"$log" 2>&1; then
        echo "tests/$run: ok ($((SECONDS - t0)) s)" >&2
    else
        echo "tests/$run: FAILED ($((SECONDS - t0)) s): see $log" >&2
        grep -E "panicked|FAILED" "$log" | head -n 10 >&2
        failed=$((failed + 1))
    fi
    [ "$run" = kernels ] || rm -f "$out/.$t"
done
debs=()
ls "$pack"/debs/*.deb >/dev/null 2>&1 && debs=(--debs "$pack/debs")
scripts/gpu-bench.sh --bin "$pack/wgtune" "${debs[@]}" --out "$out" "${@:2}" || failed=$((failed + 1))
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
echo "results: $out and $out.tgz ($failed failed)" >&2
[ "$failed" = 0 ]
RUN
chmod +x "$dir/run.sh"
du -sh "$dir" >&2
