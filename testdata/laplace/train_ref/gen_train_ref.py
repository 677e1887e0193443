"""PyTorch reference for `curvops train`: the fixture's MLP from init.safetensors, trained in float64
on the first 300 digits of train.safetensors, batches of 50 in order (no shuffling), 3 epochs.
Writes {sgd,adam,adamw}.safetensors (float64 state dicts). Usage: python3 gen_train_ref.py"""
import os
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
torch.set_default_dtype(torch.float64)
init = {k: v.double() for k, v in load_file(os.path.join(root, "init.safetensors")).items()}
tr = load_file(os.path.join(root, "train.safetensors"))
X, y = tr["x"][:300].double(), tr["y"][:300]
runs = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2),
}
for name, make in runs.items():
    model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10))
    model.load_state_dict(init)
    opt = make(model.parameters())
    for _ in range(3):
        for i in range(0, 300, 50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(here, f"{name}.safetensors"))
    print(name, "done")
