"""Extra reference problems: layer and loss options the visible problems in `reference/` lack.

Same file formats as `reference/` (see reference/README.md); reuses `generate()` and the helpers
of reference/gen_problems.py, with three additions:
  * `build_module` also passes batch norm's `affine` and avg-pool's `count_include_pad`
    (gen_problems.py ignores them);
  * `soft_targets: true` gives `bce_with_logits` targets uniform in [0, 1] instead of {0, 1};
  * a curvlinops operator (KFAC / EKFAC) that raises is skipped: its file is not written and
    meta.json records it under "skipped" with the error.

Usage: python gen_extra.py [OUT_DIR]     (default: extra/ next to this script)
Needs: torch, curvlinops-for-pytorch, safetensors, numpy (as gen_problems.py).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import gen_problems as gp  # noqa: E402
from gen_problems import conv, lin  # noqa: E402

# ---------------------------------------------------------------------------------------------
# extensions of gen_problems.py (patched into its namespace so that generate() uses them)

_base_build = gp.build_module


def build_module(layer):
    t = layer["type"]
    if t in ("batchnorm1d", "batchnorm2d"):
        cls = nn.BatchNorm1d if t == "batchnorm1d" else nn.BatchNorm2d
        return cls(layer["num_features"], eps=layer.get("eps", 1e-5),
                   affine=layer.get("affine", True))
    if t == "avgpool2d":
        return nn.AvgPool2d(layer["kernel_size"], stride=layer.get("stride"),
                            padding=layer.get("padding", 0),
                            count_include_pad=layer.get("count_include_pad", True))
    return _base_build(layer)


_base_make_data = gp.make_data


def make_data(spec, model, g):
    X, y = _base_make_data(spec, model, g)
    if spec.get("soft_targets"):
        assert spec["loss"]["type"] == "bce_with_logits"
        y = torch.rand(y.shape, generator=g)
    return X, y


SKIPPED = []  # (what, error) of the problem being generated


class _Skipped:
    """Stands in for an operator curvlinops could not build; `generate()` gets zeros."""

    def __init__(self, shape):
        self.shape = shape

    def __matmul__(self, other):
        return torch.zeros(self.shape[0], other.shape[1])


def _guard(cls, key_of):
    def make(*args, **kwargs):
        try:
            op = cls(*args, **kwargs)
            op @ torch.eye(op.shape[1])[:, :1]  # fail here rather than inside generate()
            return op
        except Exception as e:  # noqa: BLE001
            D = sum(p.numel() for p in args[2])
            SKIPPED.append((key_of(kwargs), f"{type(e).__name__}: {e}"))
            print(f"  skipped {key_of(kwargs)}: {type(e).__name__}: {e}", file=sys.stderr)
            return _Skipped((D, D))
    return make


gp.build_module = build_module
gp.make_data = make_data
gp.KFACLinearOperator = _guard(gp.KFACLinearOperator,
                               lambda kw: "kfac_" + kw["fisher_type"].replace("-", ""))
gp.EKFACLinearOperator = _guard(gp.EKFACLinearOperator,
                                lambda kw: "ekfac_" + kw["fisher_type"].replace("-", ""))


def act(t, **kw):
    return dict(type=t, **kw)


# ---------------------------------------------------------------------------------------------
# the problems (D <= ~200, N <= 8, batch_size never divides N)

EXTRA = {
    # conv: int stride 2 / padding 2 / dilation 2; rectangular kernel, list stride/padding,
    # groups 2, no bias; gelu
    "cnn_stride_dil_groups_ce": dict(
        seed=101, N=7, input_shape=[2, 7, 7], batch_size=3,
        layers=[conv(2, 4, 2, stride=2, padding=2, dilation=2), act("gelu"),
                conv(4, 2, [2, 3], stride=[2, 1], padding=[1, 0], groups=2, bias=False),
                act("flatten"), lin(18, 3)],
        loss={"type": "cross_entropy", "reduction": "mean"}),
    # depthwise conv (groups = in_channels, channel multiplier 2) + relu + maxpool with
    # stride != kernel and padding 1 (ties at 0 after relu; padding never wins); bce mean, C=3
    "cnn_depthwise_maxpool_pad_bce": dict(
        seed=102, N=6, input_shape=[2, 5, 4], batch_size=4,
        layers=[conv(2, 4, 3, padding=1, groups=2), act("relu"),
                {"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1},
                act("flatten"), lin(24, 3)],
        loss={"type": "bce_with_logits", "reduction": "mean"}),
    # rectangular conv kernel with list padding and list dilation, leaky_relu(0.2), rectangular maxpool with list
    # stride, avgpool with stride != kernel and padding (count_include_pad); mse mean, C = 1
    "cnn_rectpool_avgpool_mse1": dict(
        seed=103, N=7, input_shape=[2, 7, 8], batch_size=4,
        layers=[conv(2, 3, [3, 2], padding=[1, 0], dilation=[1, 2]),
                act("leaky_relu", negative_slope=0.2),
                {"type": "maxpool2d", "kernel_size": [2, 3], "stride": [1, 2]},
                {"type": "avgpool2d", "kernel_size": 3, "stride": 2, "padding": 1},
                act("flatten"), lin(9, 1)],
        loss={"type": "mse", "reduction": "mean"}),
    # batchnorm2d affine=false with eps, conv with list stride/padding and no bias, silu,
    # avgpool stride 1; soft-label cross entropy, sum
    "cnn_bn2d_noaffine_silu_softce_sum": dict(
        seed=104, N=6, input_shape=[2, 6, 6], batch_size=5, soft_labels=True,
        layers=[conv(2, 4, 3, stride=[1, 2], padding=[0, 1], bias=False),
                {"type": "batchnorm2d", "num_features": 4, "affine": False, "eps": 1e-3},
                act("silu"), {"type": "avgpool2d", "kernel_size": 2, "stride": 1},
                act("flatten"), lin(24, 3)],
        loss={"type": "cross_entropy", "reduction": "sum"}),
    # batchnorm2d affine=true with eps, maxpool with padding 1 and rectangular kernel, tanh;
    # hard-label cross entropy, mean, C = 4
    "cnn_bn2d_affine_maxpool_ce": dict(
        seed=105, N=7, input_shape=[2, 6, 5], batch_size=2,
        layers=[conv(2, 3, 3, padding=1),
                {"type": "batchnorm2d", "num_features": 3, "eps": 1e-2}, act("tanh"),
                {"type": "maxpool2d", "kernel_size": [3, 2], "stride": 2, "padding": 1},
                act("flatten"), lin(27, 4)],
        loss={"type": "cross_entropy", "reduction": "mean"}),
    # batchnorm1d on [C] (after linear), affine, eps; gelu; dropout; hard-label CE, sum
    "mlp_bn1d_gelu_dropout_ce_sum": dict(
        seed=106, N=7, input_shape=[6], batch_size=3,
        layers=[lin(6, 8), {"type": "batchnorm1d", "num_features": 8, "eps": 1e-3},
                act("gelu"), {"type": "dropout", "p": 0.2}, lin(8, 4)],
        loss={"type": "cross_entropy", "reduction": "sum"}),
    # batchnorm1d affine=false; silu; mse sum, C = 3
    "mlp_bn1d_noaffine_silu_mse_sum": dict(
        seed=107, N=5, input_shape=[5], batch_size=2,
        layers=[lin(5, 6), {"type": "batchnorm1d", "num_features": 6, "affine": False,
                            "eps": 0.05},
                act("silu"), lin(6, 3)],
        loss={"type": "mse", "reduction": "sum"}),
    # leaky_relu(0.1) then sigmoid; bce mean with C = 3
    "mlp_leaky_sigmoid_bce_mean": dict(
        seed=108, N=8, input_shape=[4], batch_size=3,
        layers=[lin(4, 6), act("leaky_relu", negative_slope=0.1), lin(6, 5), act("sigmoid"),
                lin(5, 3)],
        loss={"type": "bce_with_logits", "reduction": "mean"}),
    # soft bce targets in [0, 1], sum; default leaky_relu slope
    "mlp_leaky_default_softbce_sum": dict(
        seed=109, N=6, input_shape=[5], batch_size=4, soft_targets=True,
        layers=[lin(5, 6), act("leaky_relu"), lin(6, 4)],
        loss={"type": "bce_with_logits", "reduction": "sum"}),
    # no bias anywhere (MLP): tanh, sigmoid; mse mean, C = 3
    "mlp_nobias_tanh_sigmoid_mse": dict(
        seed=110, N=7, input_shape=[5], batch_size=3,
        layers=[lin(5, 7, bias=False), act("tanh"), lin(7, 6, bias=False), act("sigmoid"),
                lin(6, 3, bias=False)],
        loss={"type": "mse", "reduction": "mean"}),
    # deep: 5 parametric layers, every activation; soft-label cross entropy, mean
    "deep_mlp_mixed_softce": dict(
        seed=111, N=6, input_shape=[5], batch_size=4, soft_labels=True,
        layers=[lin(5, 6), act("tanh"), lin(6, 6), act("gelu"), lin(6, 5),
                act("leaky_relu", negative_slope=0.3), lin(5, 5), act("silu"), lin(5, 4)],
        loss={"type": "cross_entropy", "reduction": "mean"}),
    # deep CNN, no bias anywhere: conv-conv-linear-linear; bce sum
    "deep_cnn_nobias_bce_sum": dict(
        seed=112, N=5, input_shape=[1, 7, 7], batch_size=2,
        layers=[conv(1, 2, 3, bias=False), act("tanh"),
                conv(2, 2, 3, stride=2, padding=1, bias=False), act("sigmoid"),
                act("flatten"), lin(18, 3, bias=False), act("relu"), lin(3, 2, bias=False)],
        loss={"type": "bce_with_logits", "reduction": "sum"}),
}


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "extra")
    for name, spec in EXTRA.items():
        out = os.path.join(out_root, name)
        shutil.rmtree(out, ignore_errors=True)
        SKIPPED.clear()
        gp.generate(out, spec)
        meta_path = os.path.join(out, "meta.json")
        with open(meta_path) as f:
            meta = json.load(f)
        assert meta["N"] % meta["batch_size"] != 0, f"{name}: batch size divides N"
        if SKIPPED:
            for key, _ in SKIPPED:
                path = os.path.join(out, "ref", key + ".npy")
                if os.path.exists(path):
                    os.remove(path)
                meta["scalars"].pop(key, None)
            meta["skipped"] = {key: err for key, err in SKIPPED}
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
