#!/usr/bin/env bash
# Run wgtune's benchmarks (and the PyTorch reference, where torch is installed) on a Linux machine with a GPU and
# no network, and collect every result in one folder.
#
#   scripts/gpu-bench.sh [--bin PATH] [--debs DIR] [--out DIR] [--size PX] [--bs N] [--steps N]
#                        [--models LIST] [--step-timeout S] [--quick]
#
#   --bin     the wgtune release binary, built elsewhere (default: target/release/wgtune)
#   --debs    a folder of Debian packages with the Vulkan loader (libvulkan1, ...), unpacked into a private prefix
#             when the machine has no libvulkan.so.1 (default: .gl when it exists)
#   --out     results folder (default: bench-results-DATE)
#   --size, --bs, --steps   training benchmark shape (default: 224, 32, 20)
#   --models  comma-separated (default: effnet-lite0,resnet18,resnet50,convnext_tiny,vit_small_patch16_224)
#   --matmul-sizes  comma-separated square sizes (default: 1024,2048,4096)
#   --step-timeout  seconds any one measurement may run before it is stopped and counted as failed (default 240),
#             so a slot on a lent GPU always ends with the results measured so far
#   --quick   a small shape for a software driver: 64 px, batch 8, 2 steps, small matmuls
#
# Each wgtune measurement is followed at once by its PyTorch twin (where torch imports), so a run cut short still
# holds pairs to compare; the first model is measured first in both precisions.
#
# Writes info.json, matmul.jsonl (every variant and the autotuner's choice), conv.jsonl, tune.jsonl (the autotuner's
# choice per problem, with every variant's time), train.jsonl (one line per model, with the profile tables), memory.jsonl,
# train-f16.jsonl and memory-f16.jsonl (where the adapter has shader-f16),
# torch.jsonl (when torch imports; on CUDA when it sees a GPU), autotune/ (the cache), logs/, and summary.md.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/target/release/wgtune"
debs=""
[ -d "$here/.gl" ] && debs="$here/.gl"
out="bench-results-$(date -u +%Y%m%dT%H%M%SZ)"
size=224; bs=32; steps=20; step_timeout=240; models="effnet-lite0,resnet18,resnet50,convnext_tiny,vit_small_patch16_224"; matmul_sizes="1024,2048,4096"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --debs) debs="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --bs) bs="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --matmul-sizes) matmul_sizes="$2"; shift 2 ;;
        --step-timeout) step_timeout="$2"; shift 2 ;;
        --quick) size=64; bs=8; steps=2; matmul_sizes="256,1024"; shift ;;
        -h|--help) sed -n 2,26p "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
[ -x "$bin" ] || { echo "no wgtune binary at $bin (build with cargo build --release, or pass --bin)" >&2; exit 2; }

# The Vulkan loader: the system's, or the carried packages unpacked under $out/.vulkan (never into /).
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
    if [ -n "$debs" ] && ls "$debs"/*.deb >/dev/null 2>&1; then
        for f in "$debs"/*.deb; do dpkg -x "$f" "$out/.vulkan"; done
        export LD_LIBRARY_PATH="$(find "$out/.vulkan" -name 'libvulkan.so.1' -printf '%h\n' | head -n 1):${LD_LIBRARY_PATH:-}"
    else
        echo "warning: no libvulkan.so.1 on this machine and no --debs folder with libvulkan1" >&2
    fi
fi
# NVIDIA containers often keep the ICD outside the loader's search path.
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES="$nvidia_icd"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

failed=0
step() {  # step NAME OUTFILE COMMAND...: run, keep stdout in OUTFILE (appended) and stderr in logs/NAME.log
    local name="$1" file="$2"; shift 2
    echo "== $name" >&2
    local t0=$SECONDS
    if timeout -k 10 "$step_timeout" "$@" >>"$out/$file" 2>"$out/logs/$name.log"; then
        echo "   ok ($((SECONDS - t0)) s)" >&2
    else
        echo "   FAILED ($((SECONDS - t0)) s): see logs/$name.log" >&2
        tail -n 5 "$out/logs/$name.log" >&2
        failed=$((failed + 1))
    fi
}

{ date -u +%Y-%m-%dT%H:%M:%SZ; uname -a; nvidia-smi -L 2>/dev/null; "$bin" --version; } >"$out/machine.txt" 2>&1
step info info.json "$bin" info --json
# The autotuner's cache lives with the results (its choices are part of them); `bench tune` compiles each model's
# step first, so the training lines below run tuned and their first step holds no timing of variants.
export WGTUNE_CACHE_DIR="$out/autotune"
torch_py="${PYTHON:-python3}"
ref="$here/tools/torch_reference.py"
if "$torch_py" -c "import torch" 2>/dev/null; then
    device="$("$torch_py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")"
    torch_step() { step "$@"; }
else
    echo "(no torch here: the PyTorch side is skipped)" | tee "$out/torch.skipped" >&2
    torch_step() { :; }
fi
f16=0
"$bin" info --json 2>/dev/null | grep -q SHADER_F16 && f16=1

step matmul matmul.jsonl "$bin" bench matmul --sizes "$matmul_sizes" --kernels tiled,shared32,shared64,shared128,staged128,auto --json
torch_step torch-matmul torch.jsonl "$torch_py" "$ref" matmul --device "${device:-cpu}" --sizes ${matmul_sizes//,/ } --json
step conv conv.jsonl "$bin" bench conv --matmul-sizes 1024 --json
torch_step torch-conv torch.jsonl "$torch_py" "$ref" conv --device "${device:-cpu}" --json
IFS=, read -r -a model_list <<<"$models"
for i in "${!model_list[@]}"; do
    m="${model_list[$i]}"
    step "tune-$m" tune.jsonl "$bin" bench tune --model "$m" --size "$size" --bs "$bs" --json
    step "train-$m" train.jsonl "$bin" bench train --model "$m" --size "$size" --bs "$bs" --steps "$steps" --profile --json
    torch_step "torch-train-$m" torch.jsonl "$torch_py" "$ref" bench --device "${device:-cpu}" --model "$m" \
        --size "$size" --bs "$bs" --steps "$steps" --json
    # Mixed precision (issue 14), where the adapter has shader-f16: the first two models' steps in f16 too.
    if [ "$f16" = 1 ] && [ "$i" -lt 2 ]; then
        step "train-f16-$m" train-f16.jsonl "$bin" bench train --model "$m" --size "$size" --bs "$bs" --steps "$steps" \
            --precision f16 --json
    fi
done
step memory memory.jsonl "$bin" bench memory --model "$models" --size "$size" --bs "$bs" --json
if [ "$f16" = 1 ]; then
    step memory-f16 memory-f16.jsonl "$bin" bench memory --model "$models" --size "$size" --bs "$bs" --precision f16 --json
fi

if command -v python3 >/dev/null; then
    python3 "$here/tools/bench_summary.py" "$out" >"$out/summary.md" 2>"$out/logs/summary.log" || failed=$((failed + 1))
    cat "$out/summary.md"
fi
echo "results: $out ($failed failed)" >&2
[ "$failed" = 0 ]
