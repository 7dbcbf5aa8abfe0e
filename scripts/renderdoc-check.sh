#!/usr/bin/env bash
# Record one training step of `wgtune finetune` with RenderDoc and check that the capture reads like the model:
# every checked layer is a debug group holding its compute dispatches, and buffers/pipelines carry layer labels.
#
#   scripts/renderdoc-check.sh [OUT_DIR]
#
# Needs Debian's renderdoc and python3-renderdoc (installed with apt-get when missing and running as root) and a
# Vulkan driver (Mesa's lavapipe is enough). Leaves the capture in OUT_DIR (default: a new temp folder) to open in
# RenderDoc's UI: `qrenderdoc OUT_DIR/wgtune_capture.rdc`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v renderdoccmd >/dev/null || ! /usr/bin/python3 -c "import renderdoc" 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends renderdoc python3-renderdoc
    else
        echo "needs renderdoc and python3-renderdoc: sudo apt-get install renderdoc python3-renderdoc" >&2
        exit 1
    fi
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

out="${1:-$(mktemp -d)}"
mkdir -p "$out"
cargo build --release --quiet

# Two classes of the embedded data, 32 training and 8 validation images each: 8 steps per epoch at batch 8.
data="$out/data"
for split in train:32 valid:8; do
    name="${split%%:*}"; n="${split##*:}"
    for class in Trouser Bag; do
        mkdir -p "$data/$name/$class"
        find "assets/fashion_mnist/$name/$class" -name '*.png' | sort | head -n "$n" | xargs cp -t "$data/$name/$class"
    done
done

# Step 10 is the second step after unfreezing: every layer has its forward and backward dispatches.
rm -f "$out"/wgtune_capture*.rdc
renderdoccmd capture -w -c "$out/wgtune" target/release/wgtune finetune --data "$data" --size 32 --bs 8 \
    --epochs 1 --freeze-epochs 1 --out "$out/model.safetensors" --capture-step 10 >"$out/finetune.log" 2>&1
capture="$(ls "$out"/wgtune_capture*.rdc 2>/dev/null | head -n 1)"
if [ -z "$capture" ]; then
    echo "FAIL: RenderDoc wrote no capture (see $out/finetune.log)" >&2
    exit 1
fi
/usr/bin/python3 scripts/renderdoc_check.py "$capture" \
    _conv_stem "_conv_stem backward" _blocks.0._depthwise_conv "_blocks.0._depthwise_conv backward" \
    _blocks.15._project_conv _bn1 head.0 head.8 "head.8 backward" loss optimizer
echo "capture: $capture ($(du -h "$capture" | cut -f1)); open it with: qrenderdoc $capture"
