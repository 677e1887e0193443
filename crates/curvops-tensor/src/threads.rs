//! Process-wide thread setting, and data-parallel loops whose results do not depend on it.
//!
//! `set_threads(t)` chooses how many threads faer's GEMM and the per-sample loops of the layers
//! may use (through rayon's global pool). Two rules keep results bitwise identical for every
//! thread count: loops split work into *fixed* chunks (independent of the thread count) and
//! reductions add the chunks' partial results in chunk order; GEMMs inside a parallel loop run
//! sequentially (faer's parallel GEMM splits only the output, so it is bitwise equal to the
//! sequential one).

use crate::Float;
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static IN_PARALLEL: Cell<bool> = const { Cell::new(false) };
}

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

/// faer's parallelism argument for the current setting (sequential inside parallel loops).
pub fn par() -> faer::Par {
    if IN_PARALLEL.with(Cell::get) {
        return faer::Par::Seq;
    }
    match threads() {
        0 | 1 => faer::Par::Seq,
        t => faer::Par::rayon(t),
    }
}

/// Runs `f` marked as inside a parallel loop (its GEMMs run sequentially).
fn in_parallel<R>(f: impl FnOnce() -> R) -> R {
    // a worker may come from a part of faer's parallel GEMM (see `gemm::clear_upper_state`)
    crate::gemm::clear_upper_state();
    IN_PARALLEL.with(|c| {
        let old = c.replace(true);
        let r = f();
        c.set(old);
        r
    })
}

/// Calls `f(i, item)` for each of the consecutive `item_len`-sized items of `out`, in
/// parallel when more than one thread is configured. Items must be independent.
pub fn for_each_item<T: Send>(out: &mut [T], item_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if item_len == 0 {
        return;
    }
    if threads() > 1 && out.len() > item_len && !IN_PARALLEL.with(Cell::get) {
        out.par_chunks_mut(item_len).enumerate().for_each(|(i, c)| in_parallel(|| f(i, c)));
    } else {
        for (i, c) in out.chunks_mut(item_len).enumerate() {
            f(i, c);
        }
    }
}

/// As [`for_each_item`], with scratch state `S` made by `init` once per worker (not per item):
/// `f(&mut state, i, item)`. The state must not carry results from one item to the next.
pub fn for_each_item_with<T: Send, S>(
    out: &mut [T],
    item_len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) {
    if item_len == 0 {
        return;
    }
    if threads() > 1 && out.len() > item_len && !IN_PARALLEL.with(Cell::get) {
        out.par_chunks_mut(item_len).enumerate().for_each_init(&init, |st, (i, c)| in_parallel(|| f(st, i, c)));
    } else {
        let mut st = init();
        for (i, c) in out.chunks_mut(item_len).enumerate() {
            f(&mut st, i, c);
        }
    }
}

/// Items per chunk of [`sum_over_chunks`]: fixed, so that the summation order (and the result)
/// is the same for every thread count.
pub const REDUCE_CHUNK: usize = 8;

/// `acc += Σ_items contribution`, where `f(range, buf)` adds the contributions of the items in
/// `range` to `buf`. Items are grouped in chunks of [`REDUCE_CHUNK`]; chunks are computed in
/// parallel into private buffers when more than one thread is configured, and added to `acc`
/// in chunk order.
pub fn sum_over_chunks<T: Float>(
    n_items: usize,
    acc: &mut [T],
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync + Send,
) {
    if n_items <= REDUCE_CHUNK {
        f(0..n_items, acc);
        return;
    }
    let chunks: Vec<std::ops::Range<usize>> =
        (0..n_items).step_by(REDUCE_CHUNK).map(|s| s..(s + REDUCE_CHUNK).min(n_items)).collect();
    let len = acc.len();
    let partial = |r: std::ops::Range<usize>| {
        let mut b = vec![T::zero(); len];
        f(r, &mut b);
        b
    };
    let parts: Vec<Vec<T>> = if threads() > 1 && !IN_PARALLEL.with(Cell::get) {
        chunks.into_par_iter().map(|r| in_parallel(|| partial(r))).collect()
    } else {
        chunks.into_iter().map(partial).collect()
    };
    for p in parts {
        crate::ops::axpy(T::one(), &p, acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_sums_do_not_depend_on_threads() {
        let data: Vec<f64> = (0..1000i32).map(|i| (f64::from(i) * 0.37).sin() * 1e3f64.powi(i % 7 - 3)).collect();
        let run = || {
            let mut acc = vec![0.0f64; 3];
            sum_over_chunks(data.len(), &mut acc, |r, b| {
                for i in r {
                    b[i % 3] += data[i];
                }
            });
            acc
        };
        set_threads(1);
        let a = run();
        set_threads(2);
        let b = run();
        set_threads(1);
        assert_eq!(a, b);
        let mut out = vec![0usize; 12];
        set_threads(2);
        for_each_item(&mut out, 3, |i, c| c.fill(i));
        set_threads(1);
        assert_eq!(out, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
    }
}
