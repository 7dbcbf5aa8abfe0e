#!/usr/bin/env python3
"""Make wgtune's embedded default dataset: a balanced Fashion-MNIST subset as PNG files in ImageFolder layout.

    apt-get install dataset-fashion-mnist        # Debian: /usr/share/datasets/fashion-mnist/*.gz (MIT)
    pip install pillow
    python3 tools/make_fashion_subset.py /usr/share/datasets/fashion-mnist assets/fashion_mnist 200 50

Takes, for each of the 10 classes, the first 200 images of that class in the training file (-> train/) and the
first 50 in the test file (-> valid/), and writes them as 28x28 greyscale PNGs named by their index in the source
file: assets/fashion_mnist/{train,valid}/<class name>/<index>.png.
"""
import gzip
import os
import struct
import sys

from PIL import Image

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def export(src, prefix, out_dir, per_class):
    (n, h, w), pixels = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    (_,), labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    taken = [0] * len(CLASSES)
    for i in range(n):
        c = labels[i]
        if taken[c] >= per_class:
            continue
        taken[c] += 1
        d = os.path.join(out_dir, CLASSES[c])
        os.makedirs(d, exist_ok=True)
        img = Image.frombytes("L", (w, h), pixels[i * h * w:(i + 1) * h * w])
        img.save(os.path.join(d, f"{i:05d}.png"), optimize=True)
    return sum(taken)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    src, out, n_train, n_valid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t = export(src, "train", os.path.join(out, "train"), n_train)
    v = export(src, "t10k", os.path.join(out, "valid"), n_valid)
    print(f"{out}: {t} train + {v} valid images")


if __name__ == "__main__":
    main()
