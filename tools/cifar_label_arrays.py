"""CIFAR-10 Python batches whose `labels` is a NumPy array, for `datasets`' test
`label_arrays_read_as_torchvision_reads_them` (`crates/datasets/src/cifar_python.rs`).

The official batches hold `labels` as a list; torchvision's `CIFAR10` extends its targets with
`entry["labels"]`, which reads an integer array alike, as re-pickled batches often hold one.
Writes `crates/datasets/tests/data/cifar-labels-*.pkl`: two images (`data` is
`np.arange(6144) % 256` as uint8, shape (2, 3072)) with labels [3, 9] as int64 in protocols 2
(Python 3's: bytes through `_codecs.encode`, NumPy's globals and `(0,)` repeated by reference)
and 5, uint8 in protocol 4 (its dtype repeated by reference) and int16 in protocol 4; and
labels torchvision would not give CIFAR-10's: float64 [3, 9], big-endian int64 [3, 9],
int64 [-1, 9] and a (2, 1) array.

    python3 tools/cifar_label_arrays.py   # numpy
"""
import os
import pickle

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "datasets", "tests", "data")
data = (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3072)
CASES = {
    "int64-p2": (np.array([3, 9], dtype=np.int64), 2),
    "int64-p5": (np.array([3, 9], dtype=np.int64), 5),
    "uint8-p4": (np.array([3, 9], dtype=np.uint8), 4),
    "int16-p4": (np.array([3, 9], dtype=np.int16), 4),
    "float64-p4": (np.array([3, 9], dtype=np.float64), 4),
    "bigendian-p4": (np.array([3, 9], dtype=">i8"), 4),
    "negative-p4": (np.array([-1, 9], dtype=np.int64), 4),
    "column-p4": (np.array([[3], [9]], dtype=np.int64), 4),
}
for name, (labels, protocol) in CASES.items():
    with open(os.path.join(OUT, f"cifar-labels-{name}.pkl"), "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f, protocol=protocol)
