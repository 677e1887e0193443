"""The reference problems (../shared/reference, ../shared/reference-graph) as ordinary torch modules."""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("CURVOPS_SHARED", os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared")))
SEQ = os.path.join(SHARED, "reference")
GRAPH = os.path.join(SHARED, "reference-graph")

_DT = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """name -> torch tensor (a minimal reader of the format: u64 header size, JSON, bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=_DT[v["dtype"]]).reshape(v["shape"])
        out[k] = torch.from_numpy(arr.copy())
    return out


def problems(root):
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "meta.json")))


def _act(t, d):
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "silu": nn.SiLU(),
            "gelu": nn.GELU(approximate=d.get("approximate", "none")),
            "leaky_relu": nn.LeakyReLU(d.get("negative_slope", 0.01))}[t]


def sequential(layers):
    mods = []
    for d in layers:
        t = d["type"]
        if t == "linear":
            mods.append(nn.Linear(d["in_features"], d["out_features"], bias=d.get("bias", True)))
        elif t == "conv2d":
            mods.append(nn.Conv2d(d["in_channels"], d["out_channels"], d["kernel_size"], stride=d.get("stride", 1),
                                  padding=d.get("padding", 0), dilation=d.get("dilation", 1), groups=d.get("groups", 1),
                                  bias=d.get("bias", True)))
        elif t == "maxpool2d":
            mods.append(nn.MaxPool2d(d["kernel_size"], d.get("stride"), d.get("padding", 0)))
        elif t == "avgpool2d":
            mods.append(nn.AvgPool2d(d["kernel_size"], d.get("stride"), d.get("padding", 0)))
        elif t == "batchnorm1d":
            mods.append(nn.BatchNorm1d(d["num_features"], eps=d.get("eps", 1e-5), affine=d.get("affine", True)))
        elif t == "batchnorm2d":
            mods.append(nn.BatchNorm2d(d["num_features"], eps=d.get("eps", 1e-5), affine=d.get("affine", True)))
        elif t == "dropout":
            mods.append(nn.Dropout(d.get("p", 0.5)))
        elif t == "flatten":
            mods.append(nn.Flatten())
        else:
            mods.append(_act(t, d))
    return nn.Sequential(*mods)


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ResNetTiny(nn.Module):
    def __init__(self, in_ch=3, width=4, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class PreLNResidual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.act, self.fc = nn.LayerNorm(d), nn.GELU(), nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.act(self.ln(x)))


class LayerNormMLP(nn.Module):
    def __init__(self, d_in=6, width=8, d_out=2):
        super().__init__()
        self.fc_in, self.ln, self.act = nn.Linear(d_in, width), nn.LayerNorm(width), nn.GELU()
        self.block, self.head = PreLNResidual(width), nn.Linear(width, d_out)

    def forward(self, x):
        return self.head(self.block(self.act(self.ln(self.fc_in(x)))))


class MLP(nn.Module):
    def __init__(self, E, hidden, approximate):
        super().__init__()
        self.fc, self.act, self.proj = nn.Linear(E, hidden), nn.GELU(approximate=approximate), nn.Linear(hidden, E)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, E, n_head, hidden, approximate):
        super().__init__()
        self.ln_1 = nn.LayerNorm(E)
        self.attn = nn.MultiheadAttention(E, n_head, batch_first=True)
        self.ln_2 = nn.LayerNorm(E)
        self.mlp = MLP(E, hidden, approximate)

    def forward(self, x):
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.ln_1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, is_causal=True, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Token + learned positions, pre-LN blocks, final LN, lm_head tied to wte; logits [N, V, T]
    (class axis 1, as nn.CrossEntropyLoss reads it)."""

    def __init__(self, vocab=11, T=5, E=8, n_head=2, n_layer=1, hidden=16, approximate="tanh"):
        super().__init__()
        self.T = T
        self.wte = nn.Embedding(vocab, E)
        self.wpe = nn.Embedding(T, E)
        self.blocks = nn.ModuleList([Block(E, n_head, hidden, approximate) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(E)
        self.lm_head = nn.Linear(E, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        assert idx.shape[1] == self.T
        x = self.wte(idx) + self.wpe(torch.arange(self.T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x)).transpose(1, 2)


LOSS = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss, "bce_with_logits": nn.BCEWithLogitsLoss}


def load(root, name):
    """(model, loss_fn, X, y, meta, params in the reference's flat order) in float64."""
    d = os.path.join(root, name)
    spec = json.load(open(os.path.join(d, "model.json")))
    meta = json.load(open(os.path.join(d, "meta.json")))
    w = read_safetensors(os.path.join(d, "weights.safetensors"))
    data = read_safetensors(os.path.join(d, "data.safetensors"))
    if "layers" in spec:
        model = sequential(spec["layers"])
    else:
        model = {"resnet_block_ce": ResNetTiny, "layernorm_mlp_mse": LayerNormMLP, "tiny_gpt_ce": TinyGPT}[name]()
        if name == "tiny_gpt_ce":
            w["wpe.weight"] = w["wpe.weight"].reshape(model.wpe.weight.shape)
            w.setdefault("lm_head.weight", w["wte.weight"])
    model = model.double()
    missing, unexpected = model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in w.items()},
                                                strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    model.eval()
    X, y = data["x"], data["y"]
    if X.is_floating_point():
        X = X.double()
    if y.is_floating_point():
        y = y.double()
    loss = LOSS[spec["loss"]["type"]](reduction=spec["loss"].get("reduction", "mean"))
    named = dict(model.named_parameters())
    params = [named[e["name"]] for e in meta["param_order"]]
    return model, loss, X, y, meta, params


def ref(root, name, key):
    p = os.path.join(root, name, "ref", key + ".npy")
    return np.load(p) if os.path.exists(p) else None


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


_ = math
