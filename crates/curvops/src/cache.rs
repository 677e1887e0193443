//! Per-batch forward-pass cache with a memory budget.
//!
//! An operator applied many times to the same data (Lanczos, CG, Hutch++, `dense`) would
//! recompute each batch's forward pass and loss quantities on every application. The cache
//! keeps them, batch by batch, until the budget is reached; batches beyond the budget are
//! recomputed each time. The budget is an explicit, testable part of the operator:
//! `ForwardCache::new(0)` caches nothing (a "cold" operator).

use curvops_nn::Tape;
use curvops_tensor::Float;
use std::sync::{Arc, Mutex};

/// What one batch's forward pass provides to curvature products.
#[derive(Debug)]
pub struct BatchState<T: Float> {
    /// The forward pass.
    pub tape: Tape<T>,
    /// Output-space factor columns `[n, R, C]` (scaled by `√c`) for factor-based
    /// curvatures (EF, MC Fisher), or empty.
    pub factor: Vec<T>,
    /// `R` (columns per sample) of `factor`.
    pub rank: usize,
}

impl<T: Float> BatchState<T> {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tape.bytes() + self.factor.len() * T::BYTES
    }
}

/// Cached batch states by batch number, and the bytes they hold.
type Slots<T> = (Vec<Option<Arc<BatchState<T>>>>, usize);

/// A cache of [`BatchState`]s indexed by batch number.
#[derive(Debug)]
pub struct ForwardCache<T: Float> {
    budget: usize,
    inner: Mutex<Slots<T>>,
}

impl<T: Float> ForwardCache<T> {
    /// A cache holding at most `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget: budget_bytes, inner: Mutex::new((Vec::new(), 0)) }
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.inner.lock().expect("cache lock").1
    }

    /// Number of batches held.
    pub fn batches_held(&self) -> usize {
        self.inner.lock().expect("cache lock").0.iter().filter(|b| b.is_some()).count()
    }

    /// The state of batch `b`, computed by `make` unless cached; stored if it fits.
    pub fn get_or_compute(&self, b: usize, make: impl FnOnce() -> BatchState<T>) -> Arc<BatchState<T>> {
        if self.budget > 0 {
            let g = self.inner.lock().expect("cache lock");
            if let Some(Some(s)) = g.0.get(b) {
                return s.clone();
            }
        }
        let s = Arc::new(make());
        if self.budget > 0 {
            let mut g = self.inner.lock().expect("cache lock");
            let size = s.bytes();
            if g.1 + size <= self.budget {
                if g.0.len() <= b {
                    g.0.resize(b + 1, None);
                }
                if g.0[b].is_none() {
                    g.0[b] = Some(s.clone());
                    g.1 += size;
                }
            }
        }
        s
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut g = self.inner.lock().expect("cache lock");
        g.0.clear();
        g.1 = 0;
    }
}
