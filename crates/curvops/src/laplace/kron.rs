//! Eigendecompositions of KFAC blocks and spectral functions of `h·(B ⊗ A) + τI`.
//!
//! A weight block `B ⊗ A` with `B = Q_B Λ_B Q_Bᵀ`, `A = Q_A Λ_A Q_Aᵀ` has eigenvectors
//! `Q_B ⊗ Q_A` and eigenvalues `λ_B,i λ_A,j`; for a weight `W` (`out × in`, row-major vector)
//! `(Q_B ⊗ Q_A)ᵀ vec(W) = vec(Q_Bᵀ W Q_A)`. So `φ(h·B ⊗ A + τI) vec(W) =
//! vec(Q_B [φ(h λ_B,i λ_A,j + τ) ∘ (Q_Bᵀ W Q_A)] Q_Aᵀ)` for any scalar function `φ` (inverse,
//! inverse square root, identity), at the cost of four small GEMMs per block of vectors.
//!
//! A block with corrected eigenvalues (EKFAC-style, e.g. the debiased KFAC Laplace) keeps the
//! Kronecker eigenbasis `Q_B ⊗ Q_A` but replaces the products `λ_B,i λ_A,j` by a matrix
//! `E[i, j]`: `φ(h·H + τI) vec(W) = vec(Q_B [φ(h E + τ) ∘ (Q_Bᵀ W Q_A)] Q_Aᵀ)`.

use super::fit::KronBlock;
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};

/// The eigendecomposition of one KFAC block.
#[derive(Clone, Debug)]
pub(crate) enum BlockEig<T: Float> {
    /// `B ⊗ A`.
    Pair { qb: Mat<T>, lb: Vec<f64>, qa: Mat<T>, la: Vec<f64> },
    /// A dense block `Q diag(λ) Qᵀ`.
    Single { q: Mat<T>, l: Vec<f64> },
    /// `(Q_B ⊗ Q_A) diag(vec E) (Q_B ⊗ Q_A)ᵀ` with `E` (`[out, in]`, row-major) given.
    Corrected { qb: Mat<T>, qa: Mat<T>, e: Vec<f64> },
}

fn eig<T: Float>(m: &Mat<T>) -> (Mat<T>, Vec<f64>) {
    let e = curvops_linalg::Eigh::from_dense(m.as_ref()).expect("symmetric eigendecomposition of a KFAC factor");
    (e.vectors, e.values.iter().map(|v| v.as_f64()).collect())
}

/// Eigendecompositions of all blocks.
pub(crate) fn kron_eigs<T: Float>(blocks: &[KronBlock<T>]) -> Vec<BlockEig<T>> {
    blocks
        .iter()
        .map(|b| match b {
            KronBlock::Kron { b, a } => {
                let (qb, lb) = eig(b);
                let (qa, la) = eig(a);
                BlockEig::Pair { qb, lb, qa, la }
            }
            KronBlock::Dense(m) => {
                let (q, l) = eig(m);
                BlockEig::Single { q, l }
            }
            KronBlock::Eigen { qb, qa, values } => {
                BlockEig::Corrected { qb: qb.clone(), qa: qa.clone(), e: values.iter().map(|v| v.as_f64()).collect() }
            }
        })
        .collect()
}

impl<T: Float> BlockEig<T> {
    /// Number of coordinates.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Pair { lb, la, .. } => lb.len() * la.len(),
            Self::Single { l, .. } => l.len(),
            Self::Corrected { e, .. } => e.len(),
        }
    }

    /// All eigenvalues of the block (`λ_B,i λ_A,j` in row-major order for a pair).
    pub(crate) fn eigenvalues(&self) -> Vec<f64> {
        match self {
            Self::Pair { lb, la, .. } => lb.iter().flat_map(|&x| la.iter().map(move |&y| x * y)).collect(),
            Self::Single { l, .. } | Self::Corrected { e: l, .. } => l.clone(),
        }
    }

    /// `out ← φ(h·H_block + τI) · rhs` for the block's rows of a block of vectors.
    pub(crate) fn apply_fn(&self, h: f64, tau: f64, phi: &dyn Fn(f64) -> f64, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        let par = threads::par();
        let k = rhs.ncols();
        match self {
            Self::Single { q, l } => {
                let mut c = Mat::<T>::zeros(l.len(), k);
                matmul(c.as_mut(), Accum::Replace, q.transpose(), rhs, T::one(), par);
                for (i, &li) in l.iter().enumerate() {
                    let f = T::of(phi(h * li + tau));
                    for j in 0..k {
                        c[(i, j)] = f * c[(i, j)];
                    }
                }
                matmul(out, Accum::Replace, q.as_ref(), c.as_ref(), T::one(), par);
            }
            Self::Pair { qb, lb, qa, la } => {
                kron_apply(qb, qa, &|a, b| h * lb[a] * la[b], tau, phi, out, rhs);
            }
            Self::Corrected { qb, qa, e } => {
                let i_ = qa.nrows();
                kron_apply(qb, qa, &|a, b| h * e[a * i_ + b], tau, phi, out, rhs);
            }
        }
    }

    /// `diag φ(h·H_block + τI)`.
    pub(crate) fn diag_fn(&self, h: f64, tau: f64, phi: &dyn Fn(f64) -> f64) -> Vec<f64> {
        match self {
            Self::Single { q, l } => {
                let n = l.len();
                (0..n).map(|r| (0..n).map(|c| q[(r, c)].as_f64().powi(2) * phi(h * l[c] + tau)).sum()).collect()
            }
            Self::Pair { qb, lb, qa, la } => kron_diag(qb, qa, &|p, q| phi(h * lb[p] * la[q] + tau)),
            Self::Corrected { qb, qa, e } => {
                let i_ = qa.nrows();
                kron_diag(qb, qa, &|p, q| phi(h * e[p * i_ + q] + tau))
            }
        }
    }
}

/// `out ← (Q_B ⊗ Q_A) diag(φ(λ(i, j) + τ)) (Q_B ⊗ Q_A)ᵀ rhs` for the row-major vectorized
/// `[out, in]` weights in the columns of `rhs`: `vec(Q_B [φ(λ + τ) ∘ (Q_Bᵀ W Q_A)] Q_Aᵀ)`.
fn kron_apply<T: Float>(
    qb: &Mat<T>,
    qa: &Mat<T>,
    lam: &dyn Fn(usize, usize) -> f64,
    tau: f64,
    phi: &dyn Fn(f64) -> f64,
    out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
) {
    let par = threads::par();
    let k = rhs.ncols();
    let (o, i_) = (qb.nrows(), qa.nrows());
    // R: rows (c·o + r) = W_c[r, :]   ((o·K) × in)
    let r = Mat::<T>::from_fn(o * k, i_, |row, col| rhs[((row % o) * i_ + col, row / o)]);
    let mut r2 = Mat::<T>::zeros(o * k, i_);
    matmul(r2.as_mut(), Accum::Replace, r.as_ref(), qa.as_ref(), T::one(), par);
    // S: columns (c·in + j) = (W_c Q_A)[:, j]   (o × (in·K))
    let s = Mat::<T>::from_fn(o, i_ * k, |row, col| r2[((col / i_) * o + row, col % i_)]);
    let mut s2 = Mat::<T>::zeros(o, i_ * k);
    matmul(s2.as_mut(), Accum::Replace, qb.transpose(), s.as_ref(), T::one(), par);
    for a in 0..o {
        for b in 0..i_ {
            let f = T::of(phi(lam(a, b) + tau));
            for c in 0..k {
                s2[(a, c * i_ + b)] = f * s2[(a, c * i_ + b)];
            }
        }
    }
    let mut s3 = Mat::<T>::zeros(o, i_ * k);
    matmul(s3.as_mut(), Accum::Replace, qb.as_ref(), s2.as_ref(), T::one(), par);
    let r3 = Mat::<T>::from_fn(o * k, i_, |row, col| s3[(row % o, (row / o) * i_ + col)]);
    let mut r4 = Mat::<T>::zeros(o * k, i_);
    matmul(r4.as_mut(), Accum::Replace, r3.as_ref(), qa.transpose(), T::one(), par);
    let mut out = out;
    for c in 0..k {
        for a in 0..o {
            for b in 0..i_ {
                out[(a * i_ + b, c)] = r4[(c * o + a, b)];
            }
        }
    }
}

/// The diagonal of `(Q_B ⊗ Q_A) diag(f(p, q)) (Q_B ⊗ Q_A)ᵀ`: `diag[(a, b)] = Σ_{p,q} Q_B[a,p]²
/// Q_A[b,q]² f(p, q) = ((Q_B²) F (Q_A²)ᵀ)[a, b]`.
fn kron_diag<T: Float>(qb: &Mat<T>, qa: &Mat<T>, f: &dyn Fn(usize, usize) -> f64) -> Vec<f64> {
    let (o, i_) = (qb.nrows(), qa.nrows());
    let m = Mat::<f64>::from_fn(o, i_, f);
    let qb2 = Mat::<f64>::from_fn(o, o, |a, p| qb[(a, p)].as_f64().powi(2));
    let qa2 = Mat::<f64>::from_fn(i_, i_, |b, q| qa[(b, q)].as_f64().powi(2));
    let mut t = Mat::<f64>::zeros(o, i_);
    matmul(t.as_mut(), Accum::Replace, qb2.as_ref(), m.as_ref(), 1.0, threads::par());
    let mut d = Mat::<f64>::zeros(o, i_);
    matmul(d.as_mut(), Accum::Replace, t.as_ref(), qa2.transpose(), 1.0, threads::par());
    (0..o * i_).map(|x| d[(x / i_, x % i_)]).collect()
}
