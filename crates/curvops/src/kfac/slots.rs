//! Where the Kronecker blocks sit in the active parameter vector.
//!
//! A *slot* is one Kronecker-structured diagonal block: a layer's weight (`[out, in]`), its bias
//! (`[out, 1]`), or both joined (`[out, in + 1]`, bias as the last column). Slots gather their
//! entries of a parameter-space vector into a row-major `[out, cols]` matrix and scatter results
//! back.

use super::factors::KfacFactors;
use super::kernels::{eigen_apply, left_right, Factor};
use curvops_linalg::{Eigh, LinalgError};
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};
use std::borrow::Cow;
use std::sync::Arc;

/// One term `(L_u, R_u)` of a tied block, `X ↦ L_u X R_u` (`R_u = [1]` when absent).
type KronTerm<T> = (Arc<Mat<T>>, Option<Arc<Mat<T>>>);

/// One diagonal block of a Kronecker-factored operator.
///
/// A weight slot is the weight as an `[out, in]` matrix (gathered from the stored `[in, out]`
/// layout when `transposed`); a bias slot (also a dense block, or a tied tensor, as one
/// column) is `[out, 1]`; a joint slot `[out, in + 1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index into the operator's block list: `layers`, then `tied` (`layers.len() + i`).
    pub layer: usize,
    /// Offset of the weight in the active vector (weight slots and joint slots).
    pub w_off: Option<usize>,
    /// Offset of the bias in the active vector (bias slots and joint slots).
    pub b_off: Option<usize>,
    /// Rows (the layer's output channels).
    pub out: usize,
    /// Columns of the weight matrix.
    pub inp: usize,
    /// The weight is stored `[in, out]`.
    pub transposed: bool,
}

impl Slot {
    /// Columns of the slot matrix: `in`, `1` or `in + 1`.
    pub fn cols(&self) -> usize {
        self.w_off.map_or(0, |_| self.inp) + usize::from(self.b_off.is_some())
    }
    /// Whether the input factor acts (weight or joint slot).
    pub fn with_a(&self) -> bool {
        self.w_off.is_some()
    }
    /// Number of entries `out · cols`.
    pub fn len(&self) -> usize {
        self.out * self.cols()
    }

    /// Active-vector index of weight entry `(o, j)`.
    fn w_index(&self, w: usize, o: usize, j: usize) -> usize {
        if self.transposed {
            w + j * self.out + o
        } else {
            w + o * self.inp + j
        }
    }

    /// The slot matrix `[out, cols]` (row-major) of the active-vector column `v`.
    pub fn gather<'a, T: Float>(&self, v: &'a [T]) -> Cow<'a, [T]> {
        match (self.w_off, self.b_off) {
            (Some(w), None) if !self.transposed => Cow::Borrowed(&v[w..w + self.out * self.inp]),
            (None, Some(b)) => Cow::Borrowed(&v[b..b + self.out]),
            (Some(w), b) => {
                let c = self.cols();
                let mut x = vec![T::zero(); self.out * c];
                if self.transposed {
                    for j in 0..self.inp {
                        for (o, &val) in v[w + j * self.out..w + (j + 1) * self.out].iter().enumerate() {
                            x[o * c + j] = val;
                        }
                    }
                } else {
                    for o in 0..self.out {
                        x[o * c..o * c + self.inp].copy_from_slice(&v[w + o * self.inp..w + (o + 1) * self.inp]);
                    }
                }
                if let Some(b) = b {
                    for o in 0..self.out {
                        x[o * c + self.inp] = v[b + o];
                    }
                }
                Cow::Owned(x)
            }
            (None, None) => Cow::Borrowed(&[]),
        }
    }

    /// Writes the slot matrix `y` into the active-vector column `out`.
    pub fn scatter<T: Float>(&self, y: &[T], out: &mut [T]) {
        match (self.w_off, self.b_off) {
            (Some(w), None) if !self.transposed => out[w..w + y.len()].copy_from_slice(y),
            (None, Some(b)) => out[b..b + y.len()].copy_from_slice(y),
            (Some(w), b) => {
                let c = self.cols();
                if self.transposed {
                    for j in 0..self.inp {
                        for (o, dst) in out[w + j * self.out..w + (j + 1) * self.out].iter_mut().enumerate() {
                            *dst = y[o * c + j];
                        }
                    }
                } else {
                    for o in 0..self.out {
                        out[w + o * self.inp..w + (o + 1) * self.inp].copy_from_slice(&y[o * c..o * c + self.inp]);
                    }
                }
                if let Some(b) = b {
                    for o in 0..self.out {
                        out[b + o] = y[o * c + self.inp];
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// Active-vector index of slot entry `(o, j)`.
    pub fn index(&self, o: usize, j: usize) -> usize {
        match self.w_off {
            Some(w) if j < self.inp => self.w_index(w, o, j),
            _ => self.b_off.expect("bias column") + o,
        }
    }
}

/// The slots of fitted factors: per layer a joint slot, or a weight slot and a bias slot; then
/// one slot per tied tensor (its entries as one column).
pub fn slots_of<T: Float>(f: &KfacFactors<T>) -> Vec<Slot> {
    let mut v = Vec::new();
    for (i, l) in f.layers.iter().enumerate() {
        let base = Slot { layer: i, w_off: None, b_off: None, out: l.out, inp: l.inp, transposed: l.transposed };
        if l.joint {
            v.push(Slot {
                w_off: l.weight.as_ref().map(|p| p.offset),
                b_off: l.bias.as_ref().map(|p| p.offset),
                ..base
            });
            continue;
        }
        if let Some(w) = &l.weight {
            v.push(Slot { w_off: Some(w.offset), ..base.clone() });
        }
        if let Some(b) = &l.bias {
            v.push(Slot { b_off: Some(b.offset), ..base });
        }
    }
    for (i, t) in f.tied.iter().enumerate() {
        v.push(Slot {
            layer: f.layers.len() + i,
            w_off: None,
            b_off: Some(t.param.offset),
            out: t.rows * t.cols,
            inp: 0,
            transposed: false,
        });
    }
    v
}

/// The dense matrix `Σ_u L_u ⊗ R_u` (`[rows·cols]²`, row-major index `i·cols + j`; `R_u = [1]`
/// when absent) of a sum of Kronecker products.
pub fn kron_sum_dense<T: Float>(rows: usize, cols: usize, terms: &[(&Mat<T>, Option<&Mat<T>>)]) -> Mat<T> {
    let d = rows * cols;
    let mut m = Mat::<T>::zeros(d, d);
    for (l, r) in terms {
        for i in 0..rows {
            for k in 0..rows {
                let lv = l[(i, k)];
                if lv == T::zero() {
                    continue;
                }
                for j in 0..cols {
                    for jj in 0..cols {
                        let rv = r.map_or(T::one(), |r| r[(j, jj)]);
                        m[(i * cols + j, k * cols + jj)] += lv * rv;
                    }
                }
            }
        }
    }
    m
}

/// Runs `f(x, y)` for every column of `rhs` / `out` (`[D, K]`) with contiguous column slices
/// (copying only when a column is strided). `y` starts zeroed.
pub fn for_columns<T: Float>(mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, mut f: impl FnMut(&[T], &mut [T])) {
    let d = rhs.nrows();
    let mut xbuf: Vec<T> = Vec::new();
    let mut ybuf: Vec<T> = vec![T::zero(); d];
    for j in 0..rhs.ncols() {
        let col = rhs.col(j);
        let x: &[T] = match col.try_as_col_major() {
            Some(c) => c.as_slice(),
            None => {
                xbuf.clear();
                xbuf.extend((0..d).map(|i| col[i]));
                &xbuf
            }
        };
        let mut oc = out.as_mut().col_mut(j);
        match oc.as_mut().try_as_col_major_mut() {
            Some(s) => {
                let s = s.as_slice_mut();
                s.fill(T::zero());
                f(x, s);
            }
            None => {
                ybuf.fill(T::zero());
                f(x, &mut ybuf);
                for i in 0..d {
                    oc[i] = ybuf[i];
                }
            }
        }
    }
}

/// How one slot acts on its matrix `X` (`[out, cols]`).
#[derive(Clone, Debug)]
pub enum SlotMap<T: Float> {
    /// `Y = L X R` for symmetric `L`, `R` (`Y = L X` without `R`).
    Kron {
        /// `out × out`.
        left: Arc<Mat<T>>,
        /// `cols × cols`.
        right: Option<Arc<Mat<T>>>,
        /// Optional low-rank factor `V` of `L = VᵀV`, used for products instead of `L`.
        left_rows: Option<Arc<Mat<T>>>,
        /// Optional low-rank factor `U` of `R = UᵀU`, used for products instead of `R`.
        right_rows: Option<Arc<Mat<T>>>,
    },
    /// `y = Σ_u vec(L_u X R_u)` on a slot holding a `[rows, cols]` matrix `X` as one column
    /// (tied tensors; `R_u = [1]` when absent).
    KronSum {
        /// `[rows, cols]`.
        rows: usize,
        cols: usize,
        /// `(L_u, R_u)`.
        terms: Vec<KronTerm<T>>,
    },
    /// `Y = Q_L (F ⊙ (Q_Lᵀ X Q_R)) Q_Rᵀ`: an eigendecomposition in the Kronecker eigenbasis
    /// with eigenvalue matrix `F` (`[out, cols]`, row-major; `Q_R` the identity when `None`).
    Eigen {
        /// `Q_L`, `out × out`.
        ql: Arc<Mat<T>>,
        /// `Q_R`, `cols × cols`.
        qr: Option<Arc<Mat<T>>>,
        /// `F`.
        values: Vec<T>,
    },
}

/// A block-diagonal operator over the active vector with one [`SlotMap`] per slot.
#[derive(Clone, Debug)]
pub struct SlotOp<T: Float> {
    /// Dimension of the active vector.
    pub dim: usize,
    /// The blocks.
    pub slots: Vec<Slot>,
    /// How each block acts.
    pub maps: Vec<SlotMap<T>>,
}

impl<T: Float> SlotOp<T> {
    /// `out ← M·rhs` for a block of columns.
    pub fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        self.apply_with(out, rhs, |v| v);
    }

    /// `out ← f(M)·rhs` where `f` maps the eigenvalues of eigen slots (Kron slots are applied
    /// as they are).
    pub fn apply_with(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, f: impl Fn(T) -> T) {
        let mut tmp = Vec::new();
        let mut ybuf = Vec::new();
        let fvals: Vec<Option<Vec<T>>> = self
            .maps
            .iter()
            .map(|m| match m {
                SlotMap::Eigen { values, .. } => Some(values.iter().map(|&v| f(v)).collect()),
                SlotMap::Kron { .. } | SlotMap::KronSum { .. } => None,
            })
            .collect();
        let mut acc = Vec::new();
        for_columns(out, rhs, |x, y| {
            for ((s, m), fv) in self.slots.iter().zip(&self.maps).zip(&fvals) {
                let xs = s.gather(x);
                ybuf.resize(s.len(), T::zero());
                match m {
                    SlotMap::Kron { left, right, left_rows, right_rows } => {
                        let l = match left_rows {
                            Some(v) => Factor::Rows(v.as_ref().as_ref()),
                            None => Factor::Dense(left.as_ref().as_ref()),
                        };
                        let r = match (right_rows, right) {
                            (Some(u), _) => Some(Factor::Rows(u.as_ref().as_ref())),
                            (None, Some(r)) => Some(Factor::Dense(r.as_ref().as_ref())),
                            (None, None) => None,
                        };
                        left_right(l, r, &xs, &mut ybuf, &mut tmp)
                    }
                    SlotMap::KronSum { terms, .. } => {
                        acc.clear();
                        acc.resize(xs.len(), T::zero());
                        for (l, r) in terms {
                            let rr = r.as_ref().map(|r| Factor::Dense(r.as_ref().as_ref()));
                            left_right(Factor::Dense(l.as_ref().as_ref()), rr, &xs, &mut ybuf, &mut tmp);
                            for (a, v) in acc.iter_mut().zip(&ybuf) {
                                *a += *v;
                            }
                        }
                        ybuf.copy_from_slice(&acc);
                    }
                    SlotMap::Eigen { ql, qr, .. } => eigen_apply(
                        ql.as_ref().as_ref(),
                        qr.as_ref().map(|r| r.as_ref().as_ref()),
                        fv.as_ref().expect("eigen values"),
                        &xs,
                        &mut ybuf,
                        &mut tmp,
                    ),
                }
                s.scatter(&ybuf, y);
            }
        });
    }

    /// The eigenvalue matrices of all slots, if every slot is an eigen slot.
    fn eigen_values(&self, what: &'static str) -> Result<Vec<&[T]>, LinalgError> {
        self.maps
            .iter()
            .map(|m| match m {
                SlotMap::Eigen { values, .. } => Ok(values.as_slice()),
                SlotMap::Kron { .. } | SlotMap::KronSum { .. } => {
                    Err(LinalgError::unsupported(what, "Kronecker slot operator"))
                }
            })
            .collect()
    }

    /// `Σ log|λ + s|` over all eigenvalues; a zero eigenvalue of `M + sI` is an error.
    pub fn logdet_shifted(&self, s: T, what: &str) -> Result<T, LinalgError> {
        let mut acc = 0.0f64;
        for (k, vals) in self.eigen_values("logdet")?.into_iter().enumerate() {
            for (i, &v) in vals.iter().enumerate() {
                let x = v + s;
                if x == T::zero() {
                    return Err(LinalgError::Singular(format!(
                        "{what}: eigenvalue {i} of block {} (+ shift {s}) is 0",
                        self.slot_name(k)
                    )));
                }
                acc += x.as_f64().abs().ln();
            }
        }
        Ok(T::of(acc))
    }

    /// `out ← (M + sI)⁻¹ rhs` through the eigendecompositions.
    pub fn solve_shifted(&self, s: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>, what: &str) -> Result<(), LinalgError> {
        for (k, vals) in self.eigen_values("solve")?.into_iter().enumerate() {
            if let Some(i) = vals.iter().position(|&v| v + s == T::zero()) {
                return Err(LinalgError::Singular(format!(
                    "{what}: eigenvalue {i} of block {} (+ shift {s}) is 0",
                    self.slot_name(k)
                )));
            }
        }
        self.apply_with(out, rhs, |v| (v + s).recip());
        Ok(())
    }

    fn slot_name(&self, k: usize) -> String {
        let s = &self.slots[k];
        match (s.w_off, s.b_off) {
            (Some(_), Some(_)) => format!("{k} (weight and bias)"),
            (Some(_), None) => format!("{k} (weight)"),
            _ => format!("{k} (bias)"),
        }
    }

    /// `Σ λ` over all eigenvalues (eigen slots) — the trace.
    pub fn eigen_trace(&self) -> Result<T, LinalgError> {
        Ok(T::of(self.eigen_values("trace")?.iter().flat_map(|v| v.iter()).map(|v| v.as_f64()).sum()))
    }

    /// `(Σ λ²)^½` over all eigenvalues — the Frobenius norm.
    pub fn eigen_frobenius(&self) -> Result<T, LinalgError> {
        let s: f64 =
            self.eigen_values("frobenius norm")?.iter().flat_map(|v| v.iter()).map(|v| v.as_f64().powi(2)).sum();
        Ok(T::of(s.sqrt()))
    }

    /// The diagonal: eigen slot `(o, c)`: `Σ_{ij} Q_L[o,i]² F[i,j] Q_R[c,j]²`; Kron slot:
    /// `L[o,o] R[c,c]`.
    pub fn diagonal(&self) -> Vec<T> {
        let mut d = vec![T::zero(); self.dim];
        for (s, m) in self.slots.iter().zip(&self.maps) {
            let (o, c) = (s.out, s.cols());
            match m {
                SlotMap::Kron { left, right, .. } => {
                    for i in 0..o {
                        for j in 0..c {
                            let r = right.as_ref().map_or(T::one(), |r| r[(j, j)]);
                            d[s.index(i, j)] = left[(i, i)] * r;
                        }
                    }
                }
                SlotMap::KronSum { rows, cols, terms } => {
                    let (rows, cols) = (*rows, *cols);
                    for (l, r) in terms {
                        for i in 0..rows {
                            for j in 0..cols {
                                let rv = r.as_ref().map_or(T::one(), |r| r[(j, j)]);
                                d[s.index(i * cols + j, 0)] += l[(i, i)] * rv;
                            }
                        }
                    }
                }
                SlotMap::Eigen { ql, qr, values } => {
                    // (Q_L ∘ Q_L) F (Q_R ∘ Q_R)ᵀ
                    let ql2 = Mat::<T>::from_fn(o, o, |a, b| ql[(a, b)] * ql[(a, b)]);
                    let f = Mat::<T>::from_fn(o, c, |a, b| values[a * c + b]);
                    let mut t = Mat::<T>::zeros(o, c);
                    curvops_tensor::gemm::matmul(
                        t.as_mut(),
                        Accum::Replace,
                        ql2.as_ref(),
                        f.as_ref(),
                        T::one(),
                        threads::par(),
                    );
                    let res = match qr {
                        Some(qr) => {
                            let qr2 = Mat::<T>::from_fn(c, c, |a, b| qr[(a, b)] * qr[(a, b)]);
                            let mut r = Mat::<T>::zeros(o, c);
                            curvops_tensor::gemm::matmul(
                                r.as_mut(),
                                Accum::Replace,
                                t.as_ref(),
                                qr2.transpose(),
                                T::one(),
                                threads::par(),
                            );
                            r
                        }
                        None => t,
                    };
                    for i in 0..o {
                        for j in 0..c {
                            d[s.index(i, j)] = res[(i, j)];
                        }
                    }
                }
            }
        }
        d
    }

    /// The complete eigendecomposition (dense `D × D` eigenvectors): eigenpair `(i, j)` of an
    /// eigen slot has eigenvalue `F[i, j]` and eigenvector `q_{L,i} q_{R,j}ᵀ` (at the slot's
    /// entries).
    pub fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        let vals = self.eigen_values("eigh")?;
        let d = self.dim;
        let mut values = Vec::with_capacity(d);
        let mut vectors = Mat::<T>::zeros(d, d);
        let mut col = 0;
        for ((s, m), f) in self.slots.iter().zip(&self.maps).zip(vals) {
            let (ql, qr) = match m {
                SlotMap::Eigen { ql, qr, .. } => (ql, qr),
                SlotMap::Kron { .. } | SlotMap::KronSum { .. } => unreachable!("checked above"),
            };
            let (o, c) = (s.out, s.cols());
            for i in 0..o {
                for j in 0..c {
                    values.push(f[i * c + j]);
                    for a in 0..o {
                        for b in 0..c {
                            let r = qr.as_ref().map_or(T::one(), |q| q[(b, j)]);
                            vectors[(s.index(a, b), col)] = ql[(a, i)] * r;
                        }
                    }
                    col += 1;
                }
            }
        }
        Ok(Eigh::new_sorted(values, vectors, T::zero()))
    }
}
