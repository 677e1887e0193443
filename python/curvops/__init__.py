"""curvops: exact, matrix-free curvature of neural networks, for PyTorch models.

    import curvops
    P = curvops.Problem(model, nn.CrossEntropyLoss(), (X, y))      # or a DataLoader
    G = P.ggn()                                                     # a curvops.LinearOperator
    G @ v                                                           # numpy or torch, [D] or [D, K]
    vals, vecs = G.eigsh(k=10)
    K = P.kfac();  x = K.inverse(damping=1e-3) @ g

The drop-in for curvlinops 3.0.1 is `curvops.curvlinops` (same class names and signatures).
"""
from . import _curvops
from ._convert import ConversionError
from ._operator import LinearOperator
from ._problem import Problem, collect_data, from_torch
from .laplace import Laplace

__version__ = _curvops.__version__


def set_num_threads(n):
    """Threads for GEMMs and parallel loops (results are bitwise the same for every count)."""
    _curvops.set_threads(int(n))


def get_num_threads():
    return _curvops.threads()


__all__ = ["Problem", "LinearOperator", "Laplace", "from_torch", "collect_data", "ConversionError", "set_num_threads",
           "get_num_threads"]
