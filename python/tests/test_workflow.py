"""The workflows of docs/python.md, run as written: a torchvision ResNet and a small transformer
→ top GGN eigenvalues, a KFAC-preconditioned damped solve, and the Laplace predictive."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import curvops

g = torch.Generator().manual_seed(0)


def _check_eigs(G, vals, vecs):
    """Each pair is an eigenpair of the operator (residual), and Lanczos found the top ones:
    no Rayleigh quotient of a random block exceeds the largest."""
    R = G @ vecs - vecs * vals
    assert np.linalg.norm(R, axis=0).max() <= 1e-5 * vals[0]
    assert np.all(np.diff(vals) <= 1e-9 * vals[0])
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((G.shape[0], 4)))
    assert np.max(np.sum(Q * (G @ Q), 0)) <= vals[0] * (1 + 1e-9)


def _check_solve(G, K, b, lam):
    """KFAC-preconditioned CG solves (G + λI)x = b to its tolerance."""
    x = G.solve(b, damping=lam, precond=K.inverse(lam), tol=1e-8, max_iters=1000)
    r = G @ x + lam * x - b
    assert np.linalg.norm(r) <= 2e-8 * np.linalg.norm(b)
    return x


def test_resnet_workflow():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=4).double().eval()
    X = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (4,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=2)

    # top eigenvalues of the GGN over all 11 M parameters
    P = curvops.Problem(model, nn.CrossEntropyLoss(), loader)
    G = P.ggn()
    vals, vecs = G.eigsh(k=3, tol=1e-6)
    _check_eigs(G, vals, vecs)
    assert vecs.shape == (sum(p.numel() for p in model.parameters()), 3)

    # a KFAC-preconditioned damped solve over the first stage and the classifier
    sub = list(model.layer1.parameters()) + list(model.fc.parameters())
    Ps = curvops.Problem(model, nn.CrossEntropyLoss(), loader, params=sub)
    Gs, Ks = Ps.ggn(), Ps.kfac()
    b = Ps.loss_and_grad()[1]
    _check_solve(Gs, Ks, b, 1e-1)

    # last-layer KFAC Laplace (laplace-torch's default) and its probit predictive
    la = curvops.Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure="kron")
    la.fit(loader)
    la.optimize_prior_precision()
    probs = la(X[:2], pred_type="glm", link_approx="probit")
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    with torch.no_grad():
        map_probs = model(X[:2]).softmax(1)
    # the predictive is the MAP softmax pulled towards uniform: its max probability is not larger
    assert torch.all(probs.max(1).values <= map_probs.max(1).values + 1e-12)


class TextClassifier(nn.Module):
    def __init__(self, V=20, T=6, E=16, C=3):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.pos = nn.Parameter(0.1 * torch.randn(1, T, E, generator=g))
        layer = nn.TransformerEncoderLayer(E, 2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(E, C)

    def forward(self, x):
        return self.head(self.enc(self.emb(x) + self.pos).mean(dim=1))


def test_transformer_workflow():
    torch.manual_seed(1)
    model = TextClassifier().double().eval()
    X = torch.randint(0, 20, (10, 6), generator=g)
    y = torch.randint(0, 3, (10,), generator=g)

    P = curvops.Problem(model, nn.CrossEntropyLoss(), (X, y))
    G = P.ggn()
    vals, vecs = G.eigsh(k=5)
    _check_eigs(G, vals, vecs)

    # KFAC over every parameter (attention projections and linear layers Kronecker-factored,
    # LayerNorms, embeddings and positions their exact blocks) preconditions CG
    K = P.kfac()
    b = P.loss_and_grad()[1]
    lam = 1e-3
    _check_solve(G, K, b, lam)

    la = curvops.Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit((X, y))
    la.optimize_prior_precision()
    probs = la(X[:4], pred_type="glm", link_approx="probit")
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4, dtype=torch.float64))
    assert np.isfinite(la.log_marginal_likelihood())
