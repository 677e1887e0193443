"""`curvops.LinearOperator`: a library operator with `@` on numpy arrays and torch tensors."""
import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


class LinearOperator:
    """A matrix-free operator of curvops (Hessian, GGN, KFAC, …).

    `A @ X` takes a numpy array or a CPU torch tensor of shape `[n]` or `[n, K]` and returns the
    same kind (a tensor in the operator's dtype for tensors). All `K` columns go through the
    engine in one pass. `A.T`, `A.to_scipy()`, `A.dense()`, `A.eigsh(k)`, `A.trace()` (exact,
    from the structure), `A.logdet()`, `A.inverse(damping)`, `A.solve(B)`, and the randomized
    `A.trace_estimate(...)`, `A.diag_estimate(...)` run in the library with the GIL released.
    """

    def __init__(self, raw, torch_dtype=None):
        self._raw = raw
        self._torch_dtype = torch_dtype
        self._dtype = np.dtype(raw.dtype)
        self._shape = tuple(raw.shape)

    # -- facts -----------------------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def symmetric(self):
        return self._raw.symmetric

    def __repr__(self):
        return f"<{self._raw!r}, shape={self.shape}, dtype={self.dtype}>"

    # -- products --------------------------------------------------------------------------
    def _apply(self, X, transpose):
        if type(X) is np.ndarray and X.dtype == self._dtype and X.flags.c_contiguous:  # the fast path
            return self._raw.rmatmat(X) if transpose else self._raw.matmat(X)
        is_torch = torch is not None and isinstance(X, torch.Tensor)
        if is_torch:
            if X.device.type != "cpu":
                raise ValueError(f"x: a tensor on {X.device} (curvops computes on the CPU; move it with .cpu())")
            Xn = X.detach().numpy()
        else:
            Xn = np.asarray(X)
        Xn = np.ascontiguousarray(Xn, dtype=self.dtype)
        Y = self._raw.rmatmat(Xn) if transpose else self._raw.matmat(Xn)
        if is_torch:
            return torch.from_numpy(Y)
        return Y

    def __matmul__(self, X):
        return self._apply(X, False)

    def matvec(self, x):
        return self._apply(x, False)

    def matmat(self, X):
        return self._apply(X, False)

    def rmatmat(self, X):
        return self._apply(X, True)

    @property
    def T(self):  # noqa: N802 - numpy's name
        if self.symmetric:
            return self
        return LinearOperator(self._raw.transpose(), self._torch_dtype)

    def adjoint(self):
        return self.T

    def to_scipy(self):
        """A `scipy.sparse.linalg.LinearOperator` applying this operator."""
        from scipy.sparse.linalg import LinearOperator as SciOp

        raw, dt = self._raw, self.dtype

        def mv(v):
            return raw.matmat(np.ascontiguousarray(np.asarray(v).reshape(-1), dtype=dt))

        def mm(V):
            return raw.matmat(np.ascontiguousarray(V, dtype=dt))

        def rmv(v):
            return raw.rmatmat(np.ascontiguousarray(np.asarray(v).reshape(-1), dtype=dt))

        def rmm(V):
            return raw.rmatmat(np.ascontiguousarray(V, dtype=dt))

        return SciOp(self.shape, matvec=mv, matmat=mm, rmatvec=rmv, rmatmat=rmm, dtype=dt)

    # -- linear algebra --------------------------------------------------------------------
    def dense(self):
        """The dense matrix (numpy)."""
        return self._raw.dense()

    def eigsh(self, k=6, which="largest", tol=1e-8, seed=0):
        """`(values, vectors)`: the `k` extreme eigenpairs, values descending."""
        return self._raw.eigsh(k, which=which, tol=tol, seed=seed)

    def trace(self):
        """The exact trace from the operator's structure (KFAC, EKFAC); other operators:
        `trace_estimate(method="exact")` (n matvecs) or a randomized estimate."""
        return self._raw.trace()

    def logdet(self, shift=0.0):
        """`log|det(A + shift·I)|` from the structure (KFAC, EKFAC, damped KFAC)."""
        return self._raw.logdet(shift)

    def inverse(self, damping=0.0, mode=None, method="auto", tol=1e-10, max_iters=None):
        """`(A + damping·I)⁻¹` as an operator (KFAC/EKFAC: exact Kronecker inverse; `mode`
        `exact`, `same`, `pi`; others: `method` auto/cg/minres per application)."""
        return LinearOperator(self._raw.inverse(damping, mode=mode, method=method, tol=tol, max_iters=max_iters),
                              self._torch_dtype)

    def solve(self, B, damping=0.0, method="auto", tol=1e-10, max_iters=None, precond=None):
        """`X` with `(A + damping·I) X = B` (numpy or torch, as `B`). `precond`: an operator
        `M ≈ (A + damping·I)⁻¹` for preconditioned CG, e.g. `P.kfac().inverse(damping)`."""
        is_torch = torch is not None and isinstance(B, torch.Tensor)
        Bn = np.ascontiguousarray(B.detach().numpy() if is_torch else np.asarray(B), dtype=self.dtype)
        if precond is not None and not isinstance(precond, LinearOperator):
            raise TypeError(f"precond: expected a curvops.LinearOperator, got {type(precond).__name__}")
        X = self._raw.solve(Bn, damping=damping, method=method, tol=tol, max_iters=max_iters,
                            precond=None if precond is None else precond._raw)
        return torch.from_numpy(X) if is_torch else X

    def spectrum(self, starts=10, steps=80, seed=0, grid_points=1000, sigma=None, sigma_rel=0.01, log=False):
        """The spectral density by stochastic Lanczos quadrature: `(grid, density, nodes, weights)`
        (`density` integrates to 1; of `log|λ|` when `log`)."""
        return self._raw.spectrum(starts=starts, steps=steps, seed=seed, grid_points=grid_points, sigma=sigma,
                                  sigma_rel=sigma_rel, log=log)

    def trace_estimate(self, method="hutchinson", matvecs=100, seed=0, distribution="rademacher"):
        """`(estimate, standard error or None, matvecs used)`; `method`: hutchinson, hutchpp,
        xtrace, exact."""
        return self._raw.trace_estimate(method=method, matvecs=matvecs, seed=seed, distribution=distribution)

    def diag_estimate(self, method="hutchinson", matvecs=100, seed=0, distribution="rademacher"):
        """`(diagonal, standard errors or None)`; `method`: hutchinson, xdiag, exact."""
        return self._raw.diag_estimate(method=method, matvecs=matvecs, seed=seed, distribution=distribution)
