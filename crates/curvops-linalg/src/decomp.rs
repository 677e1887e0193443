//! Dense decompositions (faer) behind the exact operations, and the symmetric
//! eigendecomposition type [`Eigh`] that structured operators return.
//!
//! The dense factorizations are faer's: Cholesky (`llt`) for operators tagged positive
//! semi-definite, LU with partial pivoting otherwise, and faer's self-adjoint eigensolver. The
//! helpers here only add our error messages (which column failed, which operator) and the
//! shift `A + s·I`.

use crate::LinalgError;
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatMut, MatRef, Side};

/// A symmetric eigendecomposition, possibly partial:
///
/// `A = V diag(λ) Vᵀ + c·(I − V Vᵀ)`,
///
/// with `V` an `n × r` matrix of orthonormal columns (`r ≤ n`), eigenvalues `λ` sorted
/// descending, and `c` ([`Eigh::rest`]) the eigenvalue of the `n − r`-dimensional orthogonal
/// complement of `range(V)` (e.g. 0 for a low-rank operator `U diag(λ) Uᵀ`, `λ` for `λ·I`). When
/// `r = n` the complement is empty and `rest` is irrelevant.
#[derive(Clone, Debug)]
pub struct Eigh<T: Float> {
    /// Eigenvalues of the listed eigenvectors, descending.
    pub values: Vec<T>,
    /// Eigenvectors (orthonormal columns), `n × r`.
    pub vectors: Mat<T>,
    /// Eigenvalue of the complement of `range(vectors)` (multiplicity `n − r`).
    pub rest: T,
}

impl<T: Float> Eigh<T> {
    /// The dimension `n`.
    pub fn dim(&self) -> usize {
        self.vectors.nrows()
    }

    /// Number of listed eigenpairs `r`.
    pub fn rank(&self) -> usize {
        self.values.len()
    }

    /// Whether all `n` eigenpairs are listed.
    pub fn is_complete(&self) -> bool {
        self.rank() == self.dim()
    }

    /// From eigenvalues and eigenvectors in any order; sorts descending.
    pub fn new_sorted(values: Vec<T>, vectors: Mat<T>, rest: T) -> Self {
        assert_eq!(values.len(), vectors.ncols(), "Eigh: values and vectors differ in count");
        let mut idx: Vec<usize> = (0..values.len()).collect();
        idx.sort_by(|&a, &b| values[b].partial_cmp(&values[a]).unwrap_or(std::cmp::Ordering::Equal));
        let vals = idx.iter().map(|&i| values[i]).collect();
        let vecs = Mat::from_fn(vectors.nrows(), idx.len(), |r, c| vectors[(r, idx[c])]);
        Self { values: vals, vectors: vecs, rest }
    }

    /// The eigendecomposition of a dense symmetric matrix (faer's self-adjoint eigensolver;
    /// only the lower triangle is read).
    pub fn from_dense(m: MatRef<'_, T>) -> Result<Self, LinalgError> {
        if m.nrows() != m.ncols() {
            return Err(LinalgError::Dimension(format!("eigh of a {}x{} matrix", m.nrows(), m.ncols())));
        }
        let n = m.nrows();
        if n == 0 {
            return Ok(Self { values: vec![], vectors: Mat::zeros(0, 0), rest: T::zero() });
        }
        let (s, u) = sym_evd(m)?;
        // faer sorts ascending; reverse.
        let values = (0..n).rev().map(|i| s[i]).collect();
        let vectors = Mat::from_fn(n, n, |r, c| u[(r, n - 1 - c)]);
        Ok(Self { values, vectors, rest: T::zero() })
    }

    /// The decomposition of `A + s·I`.
    pub fn shifted(mut self, s: T) -> Self {
        for v in &mut self.values {
            *v += s;
        }
        self.rest += s;
        self
    }

    /// The decomposition of `c·A` (re-sorted descending).
    pub fn scaled(self, c: T) -> Self {
        let values = self.values.iter().map(|&v| c * v).collect();
        Self::new_sorted(values, self.vectors, c * self.rest)
    }

    /// All `n` eigenvalues (the complement's `rest` repeated `n − r` times), descending.
    pub fn all_values(&self) -> Vec<T> {
        let mut v = self.values.clone();
        v.extend(std::iter::repeat_n(self.rest, self.dim() - self.rank()));
        v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        v
    }

    /// The complete decomposition (`r = n`): an orthonormal basis of the complement is
    /// appended (from a full QR of `V`), with eigenvalue `rest`. `O(n³)`.
    pub fn complete(&self) -> Self {
        let (n, r) = (self.dim(), self.rank());
        if r == n {
            return self.clone();
        }
        let mut values = self.values.clone();
        values.extend(std::iter::repeat_n(self.rest, n - r));
        let q = if r == 0 { Mat::<T>::identity(n, n) } else { self.vectors.qr().compute_Q() };
        // The first r columns of Q span range(V); the last n − r span the complement.
        let vectors = Mat::from_fn(n, n, |i, j| if j < r { self.vectors[(i, j)] } else { q[(i, j)] });
        Self::new_sorted(values, vectors, T::zero())
    }

    /// `tr(A) = Σ λᵢ + (n − r)·c`.
    pub fn trace(&self) -> T {
        let s: T = self.values.iter().copied().sum();
        s + self.rest * T::of((self.dim() - self.rank()) as f64)
    }

    /// `log |det A| = Σ log|λᵢ| + (n − r)·log|c|`; a zero eigenvalue is an error.
    pub fn logdet(&self, what: &str) -> Result<T, LinalgError> {
        self.logdet_shifted(T::zero(), what)
    }

    /// `log |det(A + s·I)| = Σ log|λᵢ + s| + (n − r)·log|c + s|`; a zero eigenvalue of
    /// `A + s·I` is a [`LinalgError::Singular`] naming `what`.
    pub fn logdet_shifted(&self, s: T, what: &str) -> Result<T, LinalgError> {
        self.check_nonsingular(s, what)?;
        let mut acc: f64 = self.values.iter().map(|&v| (v + s).as_f64().abs().ln()).sum();
        let k = self.dim() - self.rank();
        if k > 0 {
            acc += k as f64 * (self.rest + s).as_f64().abs().ln();
        }
        Ok(T::of(acc))
    }

    fn check_nonsingular(&self, s: T, what: &str) -> Result<(), LinalgError> {
        if let Some(i) = self.values.iter().position(|&v| v + s == T::zero()) {
            return Err(LinalgError::Singular(format!("{what}: eigenvalue {i} is 0")));
        }
        if self.rank() < self.dim() && self.rest + s == T::zero() {
            return Err(LinalgError::Singular(format!(
                "{what}: rank {} < dimension {} (the remaining eigenvalues are 0)",
                self.rank(),
                self.dim()
            )));
        }
        Ok(())
    }

    /// `out ← f(A)·rhs = V diag(f(λ)) Vᵀ rhs + f(c)·(rhs − V Vᵀ rhs)`.
    pub fn apply_fn(&self, f: impl Fn(T) -> T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        let (n, r, k) = (self.dim(), self.rank(), rhs.ncols());
        assert_eq!(rhs.nrows(), n);
        let mut c = Mat::<T>::zeros(r, k);
        matmul(c.as_mut(), Accum::Replace, self.vectors.transpose(), rhs, T::one(), threads::par());
        if r < n {
            let fr = f(self.rest);
            let mut proj = Mat::<T>::zeros(n, k);
            matmul(proj.as_mut(), Accum::Replace, self.vectors.as_ref(), c.as_ref(), T::one(), threads::par());
            for j in 0..k {
                for i in 0..n {
                    out[(i, j)] = fr * (rhs[(i, j)] - proj[(i, j)]);
                }
            }
        }
        for i in 0..r {
            let fi = f(self.values[i]);
            for j in 0..k {
                c[(i, j)] = fi * c[(i, j)];
            }
        }
        let accum = if r < n { Accum::Add } else { Accum::Replace };
        matmul(out.as_mut(), accum, self.vectors.as_ref(), c.as_ref(), T::one(), threads::par());
    }

    /// `out ← A⁻¹·rhs` through the eigendecomposition; a zero eigenvalue is an error.
    pub fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, what: &str) -> Result<(), LinalgError> {
        self.solve_shifted(T::zero(), out, rhs, what)
    }

    /// `out ← (A + s·I)⁻¹·rhs` through the eigendecomposition.
    pub fn solve_shifted(&self, s: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>, what: &str) -> Result<(), LinalgError> {
        self.check_nonsingular(s, what)?;
        self.apply_fn(|v| (v + s).recip(), out, rhs);
        Ok(())
    }

    /// The dense matrix `V diag(λ) Vᵀ + c·(I − V Vᵀ)`.
    pub fn to_dense(&self) -> Mat<T> {
        let n = self.dim();
        let mut out = Mat::<T>::zeros(n, n);
        self.apply_fn(|v| v, out.as_mut(), Mat::<T>::identity(n, n).as_ref());
        out
    }
}

/// `m + s·I` as a new matrix.
pub(crate) fn add_shift<T: Float>(m: MatRef<'_, T>, s: T) -> Mat<T> {
    let mut a = m.to_owned();
    if s != T::zero() {
        for i in 0..a.nrows().min(a.ncols()) {
            a[(i, i)] += s;
        }
    }
    a
}

/// Cholesky factor of `m` (lower triangle read) with our error naming the failing column.
pub(crate) fn cholesky<T: Float>(m: MatRef<'_, T>, what: &str) -> Result<faer::linalg::solvers::Llt<T>, LinalgError> {
    m.llt(Side::Lower).map_err(|e| match e {
        faer::linalg::solvers::LltError::NonPositivePivot { index } => LinalgError::NotPositiveDefiniteAt {
            operator: what.to_string(),
            column: index,
            iteration: None,
            quantity: "Cholesky pivot",
            value: cholesky_pivot(m, index),
        },
    })
}

/// The Cholesky pivot of column `k` (the Schur complement's diagonal entry
/// `A_kk − ‖L[k, :k]‖²`), given that the leading `k × k` block factored (error path only).
fn cholesky_pivot<T: Float>(m: MatRef<'_, T>, k: usize) -> f64 {
    let akk = m[(k, k)].as_f64();
    if k == 0 {
        return akk;
    }
    let Ok(lead) = m.submatrix(0, 0, k, k).llt(Side::Lower) else {
        return f64::NAN;
    };
    let mut x = m.submatrix(k, 0, 1, k).transpose().to_owned();
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(lead.L(), x.as_mut(), threads::par());
    akk - (0..k).map(|i| x[(i, 0)].as_f64().powi(2)).sum::<f64>()
}

/// Singularity test for Cholesky: a pivot `Lᵢᵢ²` at round-off level of the largest.
fn check_cholesky_pivots<T: Float>(l: MatRef<'_, T>, what: &str) -> Result<(), LinalgError> {
    let n = l.nrows();
    let max = (0..n).map(|i| l[(i, i)].as_f64().powi(2)).fold(0.0, f64::max);
    let tiny = max * (n.max(1) as f64) * T::epsilon().as_f64();
    for i in 0..n {
        let p = l[(i, i)].as_f64().powi(2);
        if p <= tiny {
            return Err(LinalgError::Singular(format!(
                "{what}: Cholesky pivot {i} is {p:.3e} (largest {max:.3e}), the matrix is numerically singular"
            )));
        }
    }
    Ok(())
}

/// Singularity test for LU: a zero (or, relative to the largest, round-off sized) pivot.
fn check_lu_pivots<T: Float>(u: MatRef<'_, T>, what: &str) -> Result<(), LinalgError> {
    let n = u.nrows().min(u.ncols());
    let max = (0..n).map(|i| u[(i, i)].as_f64().abs()).fold(0.0, f64::max);
    let tiny = max * (n.max(1) as f64) * T::epsilon().as_f64();
    for i in 0..n {
        let p = u[(i, i)].as_f64().abs();
        if p == 0.0 || p <= tiny {
            return Err(LinalgError::Singular(format!(
                "{what}: LU pivot {i} is {p:.3e} (largest {max:.3e}), the matrix is numerically singular"
            )));
        }
    }
    Ok(())
}

/// `log |det(m + s·I)|`: Cholesky when `pd` (positive definite expected), LU otherwise.
pub(crate) fn dense_logdet<T: Float>(m: MatRef<'_, T>, s: T, pd: bool, what: &str) -> Result<T, LinalgError> {
    if m.nrows() != m.ncols() {
        return Err(LinalgError::Dimension(format!("logdet of {what}: not square")));
    }
    let a = add_shift(m, s);
    if pd {
        let llt = cholesky(a.as_ref(), what)?;
        let l = llt.L();
        check_cholesky_pivots(l, what)?;
        let acc: f64 = (0..a.nrows()).map(|i| l[(i, i)].as_f64().ln()).sum();
        Ok(T::of(2.0 * acc))
    } else {
        let lu = a.partial_piv_lu();
        let u = lu.U();
        check_lu_pivots(u, what)?;
        let acc: f64 = (0..a.nrows()).map(|i| u[(i, i)].as_f64().abs().ln()).sum();
        Ok(T::of(acc))
    }
}

/// `out ← (m + s·I)⁻¹ rhs`: Cholesky when `pd`, LU with partial pivoting otherwise.
pub(crate) fn dense_solve<T: Float>(
    m: MatRef<'_, T>,
    s: T,
    pd: bool,
    mut out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
    what: &str,
) -> Result<(), LinalgError> {
    if m.nrows() != m.ncols() {
        return Err(LinalgError::Dimension(format!("solve with {what}: not square")));
    }
    let a = add_shift(m, s);
    out.copy_from(rhs);
    if pd {
        let llt = cholesky(a.as_ref(), what)?;
        check_cholesky_pivots(llt.L(), what)?;
        llt.solve_in_place(out);
    } else {
        let lu = a.partial_piv_lu();
        check_lu_pivots(lu.U(), what)?;
        lu.solve_in_place(out);
    }
    Ok(())
}

/// Symmetric eigendecomposition (faer's `self_adjoint_evd`, lower triangle read) with the
/// project's thread setting (`threads::par()`) instead of faer's global parallelism:
/// eigenvalues ascending, eigenvectors as columns.
pub(crate) fn sym_evd<T: Float>(a: MatRef<'_, T>) -> Result<(Vec<T>, Mat<T>), LinalgError> {
    use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
    let par = threads::par();
    let n = a.nrows();
    let mut u = Mat::<T>::zeros(n, n);
    let mut s = faer::diag::Diag::<T>::zeros(n);
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<T>(n, ComputeEigenvectors::Yes, par, Default::default()));
    self_adjoint_evd(a, s.as_mut(), Some(u.as_mut()), par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| LinalgError::NoConvergence(format!("dense self-adjoint eigen: {e:?}")))?;
    let sr = s.as_ref();
    Ok(((0..n).map(|i| sr[i]).collect(), u))
}

/// Thin QR `A = QR` (Householder, faer's blocked `qr_in_place`, with `threads::par()`):
/// `Q` is `m × min(m,n)` with orthonormal columns and `R` is `min(m,n) × n` upper trapezoidal.
pub(crate) fn thin_qr<T: Float>(a: MatRef<'_, T>) -> (Mat<T>, Mat<T>) {
    use faer::linalg::householder::{
        apply_block_householder_sequence_on_the_left_in_place_scratch as apply_scratch,
        apply_block_householder_sequence_on_the_left_in_place_with_conj as apply_householder,
    };
    use faer::linalg::qr::no_pivoting::factor::{qr_in_place, qr_in_place_scratch, recommended_block_size};
    let par = threads::par();
    let (m, n) = (a.nrows(), a.ncols());
    let size = m.min(n);
    if size == 0 {
        return (Mat::zeros(m, 0), Mat::zeros(0, n));
    }
    let bs = recommended_block_size::<T>(m, n);
    let mut qr = a.to_owned();
    let mut coeff = Mat::<T>::zeros(bs, size);
    let mut mem = MemBuffer::new(qr_in_place_scratch::<T>(m, n, bs, par, Default::default()));
    qr_in_place(qr.as_mut(), coeff.as_mut(), par, MemStack::new(&mut mem), Default::default());
    let r = Mat::<T>::from_fn(size, n, |i, j| if i <= j { qr[(i, j)] } else { T::zero() });
    // Householder basis: unit lower trapezoidal m × size.
    let basis = Mat::<T>::from_fn(m, size, |i, j| {
        if i == j {
            T::one()
        } else if i > j {
            qr[(i, j)]
        } else {
            T::zero()
        }
    });
    let mut q = Mat::<T>::identity(m, size);
    let mut mem = MemBuffer::new(apply_scratch::<T>(m, bs, size));
    apply_householder(basis.as_ref(), coeff.as_ref(), faer::Conj::No, q.as_mut(), par, MemStack::new(&mut mem));
    (q, r)
}
