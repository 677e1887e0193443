"""Small data files in every format `curvops` reads, all holding the same 20 digits (pixels 0-16,
labels 0-9): safetensors (x/16 float32, y int64) as the reference, .npz stored and deflated,
.npy pairs (float64 Fortran order / int32), CSV with a header, gzipped IDX. Usage: python3 gen_formats.py"""
import gzip, os, struct
import numpy as np
import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
rows = np.loadtxt(os.path.join(here, "../../../shared/data/digits.csv"), delimiter=",", skiprows=1)[:20] \
    if os.path.exists(os.path.join(here, "../../../shared/data/digits.csv")) else None
if rows is None:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    rows = np.concatenate([X[:20], y[:20, None]], 1)
X, y = rows[:, :64], rows[:, 64].astype(np.int64)
save_file({"x": torch.tensor(X / 16.0, dtype=torch.float32), "y": torch.tensor(y)}, f"{here}/digits20.safetensors")
np.savez(f"{here}/digits20.npz", x=(X / 16.0).astype(np.float32), y=y)
np.savez_compressed(f"{here}/digits20_compressed.npz", x=X / 16.0, y=y.astype(np.int16))
np.save(f"{here}/digits20_x.npy", np.asfortranarray((X / 16.0).reshape(20, 8, 8)))
np.save(f"{here}/digits20_y.npy", y.astype(np.int32))
with open(f"{here}/digits20.csv", "w") as f:
    f.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
    for r in rows:
        f.write(",".join(str(int(v)) for v in r) + "\n")
with gzip.open(f"{here}/digits20-images-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 20, 8, 8) + X.astype(np.uint8).tobytes())
with gzip.open(f"{here}/digits20-labels-idx1-ubyte.gz", "wb") as f:
    f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 20) + y.astype(np.uint8).tobytes())
print("ok")
