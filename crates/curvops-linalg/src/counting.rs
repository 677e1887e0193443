//! A wrapper that counts operator applications (matvecs, one per column).

use crate::{Eigh, LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{MatMut, MatRef};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the columns applied through [`LinearOperator::apply`] and
/// [`LinearOperator::apply_transpose`] of the wrapped operator: a block of `K` columns counts
/// `K` matvecs. Algorithms in this crate wrap their operator in one to report their cost.
pub struct CountingOp<'a, T: Float, O: LinearOperator<T> + ?Sized> {
    op: &'a O,
    count: AtomicUsize,
    _t: std::marker::PhantomData<T>,
}

impl<'a, T: Float, O: LinearOperator<T> + ?Sized> CountingOp<'a, T, O> {
    /// Wraps `op` with a zero count.
    pub fn new(op: &'a O) -> Self {
        Self { op, count: AtomicUsize::new(0), _t: std::marker::PhantomData }
    }
    /// Matvecs so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
    /// The wrapped operator.
    pub fn inner(&self) -> &'a O {
        self.op
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> LinearOperator<T> for CountingOp<'_, T, O> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> Structure {
        self.op.structure()
    }
    fn describe(&self) -> String {
        self.op.describe()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.count.fetch_add(rhs.ncols(), Ordering::Relaxed);
        self.op.apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.count.fetch_add(rhs.ncols(), Ordering::Relaxed);
        self.op.apply_transpose(out, rhs)
    }
    // Exact structured operations are forwarded uncounted (they apply no matvec of the
    // operator as a black box).
    fn trace(&self) -> Result<T, LinalgError> {
        self.op.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.op.diagonal()
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        self.op.logdet()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.op.logdet_shifted(shift)
    }
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.solve(out, rhs)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.solve_shifted(shift, out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.op.eigh()
    }
}
