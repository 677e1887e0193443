//! Runtime CPU-feature dispatch for elementwise kernels.
//!
//! The crate is compiled for the baseline x86-64 target (SSE2), so that the binary runs on any
//! x86-64 machine. [`with_simd`] runs a closure inside a function compiled with AVX2 and FMA
//! when the CPU has them (detected once); the closure, inlined there, is vectorized with 8
//! `f32` lanes instead of 4. faer's GEMM does its own dispatch.

use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 baseline, 2 avx2+fma

#[inline]
fn level() -> u8 {
    let l = LEVEL.load(Ordering::Relaxed);
    if l != 0 {
        return l;
    }
    #[cfg(target_arch = "x86_64")]
    let l =
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") { 2 } else { 1 };
    #[cfg(not(target_arch = "x86_64"))]
    let l = 1;
    LEVEL.store(l, Ordering::Relaxed);
    l
}

/// Runs `f`, compiled with AVX2 + FMA when the CPU supports them. Mark the closure
/// `#[inline(always)]` so that it is inlined into (and compiled with) the AVX2 path.
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if level() == 2 {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Whether [`with_simd`] uses AVX2 + FMA on this machine.
pub fn has_avx2() -> bool {
    level() == 2
}
