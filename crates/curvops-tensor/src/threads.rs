//! Process-wide thread setting for GEMM and data-parallel kernels.
//!
//! `set_threads(t)` chooses how many threads faer's GEMM may use (through rayon's global pool).
//! With one thread everything runs sequentially on the caller's thread. Results do not depend
//! on the thread count beyond the rounding of GEMM's blocked summation.

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Sets the number of threads used by GEMM and parallel kernels (at least 1).
///
/// The first call with `t > 1` also sizes rayon's global pool; later calls only change how many
/// of its threads are used.
pub fn set_threads(t: usize) {
    let t = t.max(1);
    if t > 1 {
        // Ignore the error: the pool can be built only once per process.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    THREADS.store(t, Ordering::Relaxed);
    // faer's high-level decompositions (Cholesky, LU, QR) use faer's global setting
    faer::set_global_parallelism(par());
}

/// The current thread count.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// faer's parallelism argument for the current setting.
pub fn par() -> faer::Par {
    match threads() {
        0 | 1 => faer::Par::Seq,
        t => faer::Par::rayon(t),
    }
}
