"""from_torch: every supported module and function converts, and the converted model's outputs
equal the module's; unsupported operations raise naming the fx node and its target."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import curvops

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(0)


def outputs_match(model, X, loss=None, y=None, tol=1e-12):
    model = model.double().eval()
    with torch.no_grad():
        want = model(X)
    if y is None:
        y = torch.zeros_like(want)
    P = curvops.Problem(model, loss or nn.MSELoss(), (X, y))
    got = P.outputs()
    assert got.shape == tuple(want.shape)
    err = np.abs(got - want.numpy()).max() / max(1.0, np.abs(want.numpy()).max())
    assert err <= tol, err
    # the gradient equals autograd's (same parameter order)
    params = list(model.parameters())
    L = (loss or nn.MSELoss())(model(X), y)
    want_g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(L, params)]).numpy()
    _, got_g = P.loss_and_grad()
    assert np.linalg.norm(got_g - want_g) <= 1e-10 * max(1.0, np.linalg.norm(want_g))
    return P


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.fc(x))


@pytest.mark.parametrize("fn", [F.relu, torch.relu, torch.tanh, torch.sigmoid, F.silu, F.gelu,
                                lambda x: F.gelu(x, approximate="tanh"), lambda x: F.leaky_relu(x, 0.2),
                                nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.SiLU(), nn.GELU(), nn.GELU("tanh"),
                                nn.LeakyReLU(0.1), nn.Dropout(0.3), nn.Identity(), lambda x: x.relu(),
                                lambda x: F.dropout(x, 0.1, training=False)])
def test_activations(fn):
    outputs_match(Act(fn), torch.randn(6, 4, generator=g))


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(3, 4)

    def forward(self, x):  # x [N, 2, 6]
        h = self.a(x)                       # linear on rank 3
        h = h.view(x.shape[0], 2, 2, 3)     # view with a traced batch size
        h = h.permute(0, 2, 1, 3)           # [N, 2, 2, 3]
        h = h.transpose(1, 2).contiguous()  # [N, 2, 2, 3]
        h = torch.cat([h, h], dim=-1)       # [N, 2, 2, 6]
        h = h[:, :, 0]                      # select
        h = h[:, 1:, :3]                    # slice
        h = self.b(h)                       # [N, 1, 4]
        h = torch.flatten(h, 1) + h.mean(dim=1)
        return h.reshape(-1, 4)


def test_shape_ops():
    outputs_match(Shapes(), torch.randn(5, 2, 6, generator=g))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding="valid", groups=2, bias=False)
        self.mp = nn.MaxPool2d(2, 1)
        self.ap = nn.AvgPool2d(2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4, 3)
        self.bn1 = nn.BatchNorm1d(3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        h = self.ap(self.mp(self.c2(h)))
        h = torch.flatten(self.pool(h), 1)
        return self.bn1(self.fc(h))


def test_conv_pool_batchnorm():
    m = Conv()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (m.bn, m.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    outputs_match(m, torch.randn(4, 3, 9, 9, generator=g))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 8)
        self.pos = nn.Parameter(torch.randn(1, 4, 8))
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.emb(x) + self.pos
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        h = self.ln(h)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + a
        return self.head(h[:, 0])


def test_tokens_parameters_attention():
    X = torch.randint(0, 7, (5, 4), generator=g)
    outputs_match(Tokens(), X, nn.CrossEntropyLoss(), torch.randint(0, 3, (5,), generator=g))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder(norm_first, activation):
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, activation=activation,
                                       batch_first=True, norm_first=norm_first)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            T = x.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(T)
            return self.out(self.enc(x, mask=mask, is_causal=True).mean(dim=1))

    outputs_match(Enc(), torch.randn(3, 5, 8, generator=g))


def test_torchvision_resnet():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18(num_classes=5)
    X = torch.randn(2, 3, 32, 32, generator=g)
    P = outputs_match(m, X, nn.CrossEntropyLoss(), torch.tensor([1, 3]), tol=1e-10)
    assert P.dim == sum(p.numel() for p in m.parameters())


def test_torchvision_vit():
    tv = pytest.importorskip("torchvision")
    m = tv.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                    mlp_dim=12, num_classes=3)
    outputs_match(m, torch.randn(2, 3, 16, 16, generator=g), nn.CrossEntropyLoss(), torch.tensor([0, 2]), tol=1e-10)


def test_unsupported_op_is_named():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sin(self.fc(x))

    with pytest.raises(ValueError, match=r"fx node 'sin' .*torch\.sin"):
        curvops.Problem(Bad().double(), nn.MSELoss(), (torch.randn(2, 3), torch.randn(2, 3)))


def test_unsupported_module_and_loss():
    m = nn.Sequential(nn.Linear(3, 3), nn.Softplus())
    with pytest.raises(ValueError, match="Softplus"):
        curvops.Problem(m.double(), nn.MSELoss(), (torch.randn(2, 3), torch.randn(2, 3)))
    with pytest.raises(ValueError, match="L1Loss"):
        curvops.Problem(nn.Linear(3, 3).double(), nn.L1Loss(), (torch.randn(2, 3), torch.randn(2, 3)))


def test_bad_input_is_a_python_error():
    m = nn.Sequential(nn.Linear(3, 2)).double()
    P = curvops.Problem(m, nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.tensor([0, 1, 1, 0])))
    G = P.ggn()
    with pytest.raises(ValueError, match=r"expected shape \[8\]"):
        G @ np.ones(5)
    with pytest.raises(ValueError, match="label 2 of sample 1"):
        curvops.Problem(m, nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.tensor([0, 2, 1, 0])))
    with pytest.raises(ValueError, match="params"):
        curvops.Problem(m, nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.tensor([0, 1, 1, 0])),
                        params=[torch.nn.Parameter(torch.zeros(2))])


def test_float32_and_torch_in_torch_out():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).float()
    X = torch.randn(6, 3, generator=g).float()
    y = torch.randn(6, 2, generator=g).float()
    P = curvops.Problem(m, nn.MSELoss(), (X, y))
    H = P.hessian()
    assert H.dtype == np.float32
    v = torch.randn(H.shape[1], generator=g).float()
    out = H @ v
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == v.shape
    P64 = curvops.Problem(m.double(), nn.MSELoss(), (X.double(), y.double()))
    ref = P64.hessian() @ v.double().numpy()
    assert np.linalg.norm(out.numpy() - ref) <= 1e-4 * np.linalg.norm(ref)


def test_param_order_follows_the_caller():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    ps = list(m.parameters())
    order = [ps[2], ps[0]]
    G = curvops.Problem(m, nn.MSELoss(), (X, y), params=order).ggn().dense()
    full = curvops.Problem(m, nn.MSELoss(), (X, y)).ggn().dense()
    idx = np.concatenate([np.arange(16, 24), np.arange(0, 12)])
    assert np.abs(G - full[np.ix_(idx, idx)]).max() <= 1e-13
    Gd = curvops.Problem(m, nn.MSELoss(), (X, y), params={"w2": ps[2], "w0": ps[0]}).ggn().dense()
    assert np.abs(Gd - G).max() == 0.0


def small_mlp(din, hidden, classes, n):
    """A tanh MLP with cross-entropy on n random samples: (problem, its GGN, the dense GGN)."""
    m = nn.Sequential(nn.Linear(din, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()
    X, y = torch.randn(n, din, generator=g), torch.randint(0, classes, (n,), generator=g)
    P = curvops.Problem(m, nn.CrossEntropyLoss(), (X, y))
    G = P.ggn()
    return P, G, G.dense()


def test_linear_algebra():
    P, G, D = small_mlp(3, 4, 3, 8)
    b = np.random.default_rng(1).standard_normal(G.shape[0])
    x = G.solve(b, damping=0.1, method="cg")
    assert np.linalg.norm((D + 0.1 * np.eye(len(b))) @ x - b) <= 1e-8 * np.linalg.norm(b)
    inv = G.inverse(0.1)
    assert np.linalg.norm(inv @ b - x) <= 1e-8 * np.linalg.norm(x)
    t, se, mv = G.trace_estimate("exact")
    assert abs(t - np.trace(D)) <= 1e-12 * abs(np.trace(D))
    d, _ = G.diag_estimate("exact")
    assert np.abs(d - np.diag(D)).max() <= 1e-13
    assert np.abs(P.diag("ggn") - np.diag(D)).max() <= 1e-13
    K = P.kfac()
    Ki = K.inverse(1e-2)
    v = np.random.default_rng(2).standard_normal(G.shape[0])
    Kd = K.dense()
    assert np.linalg.norm(Ki @ v - np.linalg.solve(Kd + 1e-2 * np.eye(len(v)), v)) <= 1e-8 * np.linalg.norm(v)
    assert abs(K.trace() - np.trace(Kd)) <= 1e-12 * abs(np.trace(Kd))
    J = P.jacobian()
    assert J.shape == (8 * 3, G.shape[0])
    assert np.abs(J.T.dense() - J.dense().T).max() <= 1e-14


def test_hutchinson_statistics():
    """Hutchinson's estimate is unbiased: within 4 standard errors of the exact trace."""
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    G = curvops.Problem(m, nn.CrossEntropyLoss(), (X, y)).ggn()
    exact = np.trace(G.dense())
    for seed in range(3):
        t, se, _ = G.trace_estimate("hutchinson", 200, seed=seed)
        assert abs(t - exact) <= 4 * se


def test_laplace_matches_laplace_torch_anchor():
    """The digits MLP of ../shared/laplace: log marginal likelihood and test accuracy/NLL of the
    probit GLM predictive equal laplace-torch 0.3's numbers (anchor.json)."""
    import json
    import os

    from models import SHARED, read_safetensors

    d = os.path.join(SHARED, "laplace")
    anchor = json.load(open(os.path.join(d, "anchor.json")))
    w = read_safetensors(os.path.join(d, "trained.safetensors"))
    tr, te = read_safetensors(os.path.join(d, "train.safetensors")), read_safetensors(os.path.join(d, "test.safetensors"))
    m = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)).double()
    m.load_state_dict({k: v.double() for k, v in w.items()})
    for key, sub, hs in (("full_all", "all", "full"), ("diag_all", "all", "diag"), ("kron_all", "all", "kron"),
                         ("full_lastlayer", "last_layer", "full")):
        la = curvops.Laplace(m, "classification", subset_of_weights=sub, hessian_structure=hs)
        la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tr["x"].double(), tr["y"]), batch_size=64))
        for tau, want in anchor[key]["fixed"].items():
            lml = la.log_marginal_likelihood(prior_precision=float(tau))
            assert abs(lml - want["log_marginal_likelihood"]) <= 1e-8 * abs(want["log_marginal_likelihood"]), (key, tau)
            la.prior_precision = float(tau)
            p = la(te["x"].double())
            assert isinstance(p, torch.Tensor) and p.shape == (len(te["y"]), 10)
            acc = float((p.argmax(1) == te["y"]).double().mean())
            nll = float(-torch.log(p[torch.arange(len(te["y"])), te["y"]]).mean())
            assert abs(acc - want["accuracy"]) <= 1e-12, (key, tau)
            assert abs(nll - want["nll"]) <= 1e-8 * want["nll"], (key, tau)
        la.optimize_prior_precision()
        tau = la.prior_precision
        # laplace-torch's optimizer (Adam on log τ) stops near the optimum; ours is the maximizer
        assert abs(tau - anchor[key]["marglik_tau"]) <= 0.02 * anchor[key]["marglik_tau"], key
        best = la.log_marginal_likelihood()
        assert best >= la.log_marginal_likelihood(tau * 1.01) and best >= la.log_marginal_likelihood(tau / 1.01)


class NanoLayerNorm(nn.Module):
    """nanoGPT's LayerNorm: F.layer_norm with an optional bias."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(ndim, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(ndim, generator=g)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    """nanoGPT's CausalSelfAttention: one linear for q, k, v, split, sdpa, merged heads, c_proj."""

    def __init__(self, E, H, causal=True, chunk=False):
        super().__init__()
        self.c_attn = nn.Linear(E, 3 * E)
        self.c_proj = nn.Linear(E, E)
        self.E, self.H, self.causal, self.chunk = E, H, causal, chunk
        self.attn_dropout = 0.0

    def forward(self, x):
        B, T, C = x.size()
        if self.chunk:
            q, k, v = self.c_attn(x).chunk(3, dim=-1)
        else:
            q, k, v = self.c_attn(x).split(self.E, dim=2)
        k = k.view(B, T, self.H, C // self.H).transpose(1, 2)
        q = q.view(B, T, self.H, C // self.H).transpose(1, 2)
        v = v.view(B, T, self.H, C // self.H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.attn_dropout if self.training else 0,
                                           is_causal=self.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoBlock(nn.Module):
    def __init__(self, E, H, **kw):
        super().__init__()
        self.ln_1 = NanoLayerNorm(E, bias=True)
        self.attn = NanoAttention(E, H, **kw)
        self.ln_2 = NanoLayerNorm(E, bias=False)
        self.c_fc = nn.Linear(E, 4 * E)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * E, E)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, V=11, T=5, E=8, H=2, L=2, **kw):
        super().__init__()
        self.wte = nn.Embedding(V, E)
        self.wpe = nn.Embedding(T, E)
        self.h = nn.ModuleList([NanoBlock(E, H, **kw) for _ in range(L)])
        self.ln_f = NanoLayerNorm(E, bias=True)
        self.lm_head = nn.Linear(E, V, bias=False)
        self.wte.weight = self.lm_head.weight  # nanoGPT's weight tying

    def forward(self, idx):
        b, t = idx.size()
        assert t <= self.wpe.num_embeddings
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x)).transpose(1, 2)  # [N, V, T]: classes on axis 1, as CrossEntropyLoss reads them


@pytest.mark.parametrize("kw", [{}, {"causal": False}, {"chunk": True}])
def test_nanogpt_attention_maps_to_multihead_attention(kw):
    m = NanoGPT(**kw)
    X = torch.randint(0, 11, (3, 5), generator=g)
    y = torch.randint(0, 11, (3, 5), generator=g)
    P = outputs_match(m, X, nn.CrossEntropyLoss(), y, tol=1e-12)
    types = [d["type"] for d in P.converted.spec["nodes"]]
    assert types.count("multihead_attention") == 2 and "slice" not in types, types
    # the fused nodes read c_attn / c_proj, and nothing else is left of them
    att = [d for d in P.converted.spec["nodes"] if d["type"] == "multihead_attention"][0]
    assert att["params"]["in_proj_weight"] == "h.0.attn.c_attn.weight"
    assert att["params"]["out_proj.weight"] == "h.0.attn.c_proj.weight"
    assert att["causal"] == kw.get("causal", True)
    # the Hessian (second-order terms through the fused attention) equals double backward
    params = list(m.parameters())
    H = P.hessian()
    v = torch.randn(H.shape[0], generator=g)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
        L = nn.CrossEntropyLoss()(m(X), y)
        gr = torch.autograd.grad(L, params, create_graph=True)
        flat = torch.cat([t.reshape(-1) for t in gr])
        want = torch.cat([t.reshape(-1) for t in torch.autograd.grad(flat @ v, params)])
    assert torch.linalg.norm(H @ v - want) <= 1e-10 * torch.linalg.norm(want)


def test_sdpa_that_is_not_one_linear_map_is_named():
    class TwoMaps(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.kv = nn.Linear(4, 8)
            self.o = nn.Linear(4, 4)

        def forward(self, x):
            B, T, C = x.shape
            q = self.q(x).view(B, T, 2, 2).transpose(1, 2)
            k, v = self.kv(x).split(4, dim=2)
            k, v = k.view(B, T, 2, 2).transpose(1, 2), v.view(B, T, 2, 2).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v)
            return self.o(y.transpose(1, 2).reshape(B, T, C))

    with pytest.raises(ValueError, match="scaled_dot_product_attention.*not split from one linear map"):
        curvops.from_torch(TwoMaps(), nn.MSELoss(), torch.randn(2, 3, 4))


def test_split_chunk_unbind_functional_linear():
    class S(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 4, generator=g))
            self.b = nn.Parameter(torch.randn(6, generator=g))

        def forward(self, x):  # x [N, 3, 4]
            h = F.linear(x, self.w, self.b)
            a, b2 = torch.split(h, [2, 4], dim=-1)
            c, d = b2.chunk(2, dim=2)
            u = torch.unbind(h, dim=1)
            return torch.cat([a, c, d], dim=2)[:, 0] + u[0]

    outputs_match(S(), torch.randn(2, 3, 4, generator=g))


def test_preconditioned_solve_spectrum_vivit():
    P, G, D = small_mlp(3, 5, 4, 12)
    lam = 1e-2
    b = np.random.default_rng(3).standard_normal(G.shape[0])
    want = np.linalg.solve(D + lam * np.eye(len(b)), b)
    x = G.solve(b, damping=lam, precond=P.kfac().inverse(lam), tol=1e-12)
    assert np.linalg.norm(x - want) <= 1e-8 * np.linalg.norm(want)
    with pytest.raises(TypeError, match="precond"):
        G.solve(b, damping=lam, precond=np.eye(len(b)))
    # SLQ: the density integrates to 1; with m = D steps the largest node is λ_max
    grid, dens, nodes, weights = G.spectrum(starts=3, steps=G.shape[0], seed=1)
    assert abs(np.trapezoid(dens, grid) - 1) <= 1e-6
    assert np.allclose(weights.sum(1), 1, atol=1e-12)
    ev = np.linalg.eigvalsh(D)
    per_start = (nodes * weights).sum(1)  # vᵀGv / vᵀv of each start
    assert np.all(per_start >= ev.min() - 1e-12) and np.all(per_start <= ev.max() + 1e-12)
    assert nodes.max() <= ev.max() * (1 + 1e-8) and abs(nodes.max() - ev.max()) <= 1e-8 * ev.max()
    # ViViT's top eigenvalues equal the dense GGN's; vectors are eigenvectors
    vals, vecs, groups = P.vivit(k=4)
    assert np.abs(vals - np.sort(ev)[::-1][:4]).max() <= 1e-10 * ev.max()
    assert np.linalg.norm(D @ vecs - vecs * vals) <= 1e-9 * ev.max()
    assert set(groups) == {"all"}
    # per layer: the top eigenvalues of the layer-block-diagonal GGN, each named by its block
    vals_l, vecs_l, groups_l = P.vivit(k=3, blocks="layer")
    Db = np.zeros_like(D)
    for a, b_ in ((0, 20), (20, 44)):
        Db[a:b_, a:b_] = D[a:b_, a:b_]
    evb = np.sort(np.linalg.eigvalsh(Db))[::-1]
    assert np.abs(vals_l - evb[:3]).max() <= 1e-10 * evb[0]
    assert np.linalg.norm(Db @ vecs_l - vecs_l * vals_l) <= 1e-9 * evb[0]
    assert set(groups_l) <= {"0", "2"}


def test_indexed_parameter():
    """`wpe[:T]` (the benchmark GPT's learned positions) and `table[1]`: a parameter indexed
    directly becomes a `parameter` node with `slice`/`select`."""

    class Pos(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(9, 6)
            self.wpe = nn.Parameter(torch.randn(8, 6, generator=g))
            self.head = nn.Linear(6, 3)

        def forward(self, idx):
            T = idx.shape[1]
            h = self.emb(idx) + self.wpe[:T] + self.wpe[2]
            return self.head(h).transpose(1, 2)

    X = torch.randint(0, 9, (3, 5), generator=g)
    P = outputs_match(Pos(), X, nn.CrossEntropyLoss(), torch.randint(0, 3, (3, 5), generator=g))
    types = [d["type"] for d in P.converted.spec["nodes"]]
    assert "parameter" in types and "slice" in types and "select" in types
