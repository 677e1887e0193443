"""The first 100 rows of ../train.safetensors in the other data formats curvops reads (for
crates/curvops-cli/tests/laplace_cli.rs): .npz (compressed; x float32, y int64), .npy inputs +
.npy labels (x float64 [100, 8, 8], y int32), CSV (pixels 0-16 as integers, header, label column
first) and gzipped IDX (uint8 pixels 0-16 [100, 8, 8], uint8 labels). Usage: python3 make_formats.py"""
import gzip
import struct

import numpy as np
from safetensors.numpy import load_file

d = load_file("../train.safetensors")
x, y = d["x"][:100], d["y"][:100]
np.savez_compressed("digits100.npz", x=x, y=y)
np.save("x100.npy", x.astype(np.float64).reshape(100, 8, 8))
np.save("y100.npy", y.astype(np.int32))
pix = np.rint(x * 16).astype(np.int64)
assert np.array_equal(pix / 16.0, x.astype(np.float64))
with open("digits100.csv", "w") as f:
    f.write("digit," + ",".join(f"p{i}" for i in range(64)) + "\n")
    for row, label in zip(pix, y):
        f.write(f"{label}," + ",".join(map(str, row)) + "\n")
with gzip.open("digits100-images-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 100, 8, 8) + pix.astype(np.uint8).tobytes())
with gzip.open("digits100-labels-idx1-ubyte.gz", "wb") as f:
    f.write(struct.pack(">II", 0x801, 100) + y.astype(np.uint8).tobytes())
