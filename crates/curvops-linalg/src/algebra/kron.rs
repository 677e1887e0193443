//! Kronecker products `A ⊗ B`.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};
use std::sync::OnceLock;

/// The Kronecker product `A ⊗ B` (`A` is `m₁ × n₁`, `B` is `m₂ × n₂`), the `m₁m₂ × n₁n₂`
/// matrix with entries `(A ⊗ B)[i₁·m₂ + i₂, j₁·n₂ + j₂] = A[i₁, j₁]·B[i₂, j₂]` (numpy's
/// `kron`).
///
/// **Vectorization convention (row-major):** for an `n₁ × n₂` matrix `X` stored row-major as
/// `vec(X)` (entry `X[i, j]` at `i·n₂ + j`), `(A ⊗ B) vec(X) = vec(A X Bᵀ)`. This is the layout
/// of a linear layer's weight `W[out, in]` flattened row-major, so a KFAC block `A ⊗ B` has `A`
/// on the output side and `B` on the input side.
///
/// Applying a block of `K` columns costs one application of `B` to `n₁K` columns and one of
/// `A` to `m₂K` columns. Symmetric / PSD when both factors are.
///
/// Exact operations: `tr = tr A · tr B`, `diag = diag A ⊗ diag B`,
/// `log|det(A ⊗ B)| = n₂ log|det A| + n₁ log|det B|`, `(A ⊗ B)⁻¹ = A⁻¹ ⊗ B⁻¹` (from the factors'
/// solves); with a shift `A ⊗ B + sI` (damping), from the factors' eigendecompositions
/// `A = Qa Λa Qaᵀ`, `B = Qb Λb Qbᵀ`: `A ⊗ B + sI = (Qa ⊗ Qb)(Λa ⊗ Λb + sI)(Qa ⊗ Qb)ᵀ`, so
/// `log|det| = Σᵢⱼ log|λaᵢ λbⱼ + s|` and solves cost two Kronecker applications. The factors'
/// eigendecompositions are computed once and cached. `eigh` returns the dense `(Qa ⊗ Qb)`
/// (`n₁n₂ × n₁n₂`; only for moderate sizes).
#[derive(Debug)]
pub struct KronOp<T: Float, A, B> {
    a: A,
    b: B,
    eig: OnceLock<Result<FactorEigh<T>, LinalgError>>,
}

/// The eigendecompositions of the two Kronecker factors.
type FactorEigh<T> = (Eigh<T>, Eigh<T>);

impl<T: Float, A: Clone, B: Clone> Clone for KronOp<T, A, B> {
    fn clone(&self) -> Self {
        Self { a: self.a.clone(), b: self.b.clone(), eig: self.eig.clone() }
    }
}

/// `out (m₁m₂ × K) ← (A ⊗ B)·rhs (n₁n₂ × K)` where `fa` applies an `m₁ × n₁` map to a block
/// and `fb` an `m₂ × n₂` map.
#[allow(clippy::type_complexity)]
pub(crate) fn kron_apply<T: Float>(
    (m1, n1): (usize, usize),
    (m2, n2): (usize, usize),
    fa: &dyn Fn(MatMut<'_, T>, MatRef<'_, T>) -> Result<(), LinalgError>,
    fb: &dyn Fn(MatMut<'_, T>, MatRef<'_, T>) -> Result<(), LinalgError>,
    mut out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
) -> Result<(), LinalgError> {
    let k = rhs.ncols();
    // Column i + n₁·c of xt is row i of X_c (X_c the c-th right-hand side as an n₁ × n₂ matrix).
    let xt = Mat::<T>::from_fn(n2, n1 * k, |j, col| rhs[((col % n1) * n2 + j, col / n1)]);
    let mut w = Mat::<T>::zeros(m2, n1 * k);
    fb(w.as_mut(), xt.as_ref())?; // column i + n₁c = B·X_c[i, :]ᵀ = (X_c Bᵀ)[i, :]ᵀ
    let u = Mat::<T>::from_fn(n1, m2 * k, |i, col| w[(col % m2, i + n1 * (col / m2))]);
    let mut v = Mat::<T>::zeros(m1, m2 * k);
    fa(v.as_mut(), u.as_ref())?; // block c = A X_c Bᵀ (m₁ × m₂)
    for c in 0..k {
        for p in 0..m1 {
            for j in 0..m2 {
                out[(p * m2 + j, c)] = v[(p, j + m2 * c)];
            }
        }
    }
    Ok(())
}

fn dense_map<T: Float>(m: MatRef<'_, T>) -> impl Fn(MatMut<'_, T>, MatRef<'_, T>) -> Result<(), LinalgError> + '_ {
    move |out, rhs| {
        matmul(out, Accum::Replace, m, rhs, T::one(), threads::par());
        Ok(())
    }
}

impl<T: Float, A: LinearOperator<T>, B: LinearOperator<T>> KronOp<T, A, B> {
    /// `a ⊗ b`.
    pub fn new(a: A, b: B) -> Self {
        Self { a, b, eig: OnceLock::new() }
    }
    /// The factors `(A, B)`.
    pub fn factors(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
    fn dims(&self) -> ((usize, usize), (usize, usize)) {
        ((self.a.nrows(), self.a.ncols()), (self.b.nrows(), self.b.ncols()))
    }
    /// The (complete) eigendecompositions of the two factors, cached. Needs symmetric factors
    /// that offer `eigh`.
    pub fn factor_eigh(&self) -> Result<&(Eigh<T>, Eigh<T>), LinalgError> {
        self.eig
            .get_or_init(|| {
                if !(self.a.structure().symmetric && self.b.structure().symmetric) {
                    return Err(LinalgError::Unsupported {
                        op: "eigendecomposition (needs symmetric Kronecker factors)",
                        operator: self.describe(),
                    });
                }
                Ok((self.a.eigh()?.complete(), self.b.eigh()?.complete()))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
    fn check_square(&self, what: &'static str) -> Result<(), LinalgError> {
        crate::util::check_square(&self.a, what)?;
        crate::util::check_square(&self.b, what)?;
        Ok(())
    }
}

impl<T: Float, A: LinearOperator<T>, B: LinearOperator<T>> LinearOperator<T> for KronOp<T, A, B> {
    fn nrows(&self) -> usize {
        self.a.nrows() * self.b.nrows()
    }
    fn ncols(&self) -> usize {
        self.a.ncols() * self.b.ncols()
    }
    fn structure(&self) -> Structure {
        let (sa, sb) = (self.a.structure(), self.b.structure());
        Structure { symmetric: sa.symmetric && sb.symmetric, psd: sa.psd && sb.psd }
    }
    fn describe(&self) -> String {
        format!("({}) ⊗ ({})", self.a.describe(), self.b.describe())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let (da, db) = self.dims();
        let fa = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.a.apply(o, r);
        let fb = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.b.apply(o, r);
        kron_apply(da, db, &fa, &fb, out, rhs)
    }
    fn has_transpose(&self) -> bool {
        self.a.has_transpose() && self.b.has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let ((m1, n1), (m2, n2)) = self.dims();
        let fa = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.a.apply_transpose(o, r);
        let fb = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.b.apply_transpose(o, r);
        kron_apply((n1, m1), (n2, m2), &fa, &fb, out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.a.trace()? * self.b.trace()?)
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        let (da, db) = (self.a.diagonal()?, self.b.diagonal()?);
        Ok(da.iter().flat_map(|&x| db.iter().map(move |&y| x * y)).collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.check_square("logdet")?;
        let (n1, n2) = (self.a.nrows(), self.b.nrows());
        if shift == T::zero() {
            match (self.a.logdet(), self.b.logdet()) {
                (Ok(la), Ok(lb)) => return Ok(T::of(n2 as f64) * la + T::of(n1 as f64) * lb),
                (Err(e @ LinalgError::Singular(_)), _) | (_, Err(e @ LinalgError::Singular(_))) => return Err(e),
                _ => {}
            }
        }
        let (ea, eb) = self.factor_eigh()?;
        let mut acc = 0.0f64;
        for (i, &x) in ea.values.iter().enumerate() {
            for (j, &y) in eb.values.iter().enumerate() {
                let v = x * y + shift;
                if v == T::zero() {
                    return Err(LinalgError::Singular(format!(
                        "{}: eigenvalue λa[{i}]·λb[{j}] + {shift} is 0",
                        self.describe()
                    )));
                }
                acc += v.as_f64().abs().ln();
            }
        }
        Ok(T::of(acc))
    }
    fn solve_shifted(&self, shift: T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.check_square("solve")?;
        let (n1, n2) = (self.a.nrows(), self.b.nrows());
        let dims = ((n1, n1), (n2, n2));
        if shift == T::zero() {
            // (A ⊗ B)⁻¹ = A⁻¹ ⊗ B⁻¹ through the factors' own solves, when they have them.
            let fa = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.a.solve(o, r);
            let fb = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.b.solve(o, r);
            match kron_apply(dims.0, dims.1, &fa, &fb, out.as_mut(), rhs) {
                Ok(()) => return Ok(()),
                Err(LinalgError::Unsupported { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let (ea, eb) = self.factor_eigh()?;
        let (qa, qb) = (ea.vectors.as_ref(), eb.vectors.as_ref());
        let mut tmp = Mat::<T>::zeros(n1 * n2, rhs.ncols());
        kron_apply(dims.0, dims.1, &dense_map(qa.transpose()), &dense_map(qb.transpose()), tmp.as_mut(), rhs)?;
        for i in 0..n1 {
            for j in 0..n2 {
                let v = ea.values[i] * eb.values[j] + shift;
                if v == T::zero() {
                    return Err(LinalgError::Singular(format!(
                        "{}: eigenvalue λa[{i}]·λb[{j}] + {shift} is 0",
                        self.describe()
                    )));
                }
                let inv = v.recip();
                for c in 0..rhs.ncols() {
                    tmp[(i * n2 + j, c)] = inv * tmp[(i * n2 + j, c)];
                }
            }
        }
        kron_apply(dims.0, dims.1, &dense_map(qa), &dense_map(qb), out, tmp.as_ref())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.check_square("eigh")?;
        if !self.structure().symmetric {
            return Err(LinalgError::Structure { needed: "symmetric", structure: self.structure() });
        }
        let (ea, eb) = self.factor_eigh()?;
        let (n1, n2) = (ea.dim(), eb.dim());
        let values: Vec<T> = ea.values.iter().flat_map(|&x| eb.values.iter().map(move |&y| x * y)).collect();
        // Columns i·n₂ + j of Qa ⊗ Qb pair with λa_i λb_j.
        let v = Mat::<T>::from_fn(n1 * n2, n1 * n2, |r, c| ea.vectors[(r / n2, c / n2)] * eb.vectors[(r % n2, c % n2)]);
        Ok(Eigh::new_sorted(values, v, T::zero()))
    }
}
