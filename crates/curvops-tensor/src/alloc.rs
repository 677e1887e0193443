//! Allocator settings for processes that run curvature products.
//!
//! The engine allocates and frees megabyte-sized buffers per layer and batch. With glibc's
//! defaults, freed blocks above the (dynamic) mmap threshold go back to the kernel, and so does
//! free memory at the top of the heap beyond the trim threshold; every later allocation of that
//! size then pays for page faults and zeroing. On the benchmark problems this was a fifth of
//! the CNN's run time in the CLI and half of the MLP's GGN-vector product in Python.

/// Keeps freed memory in the process (glibc only; a no-op elsewhere): blocks below
/// `mmap_threshold` bytes come from the heap, and up to `trim_threshold` bytes of free memory
/// at its top are kept for reuse instead of being returned to the kernel. Setting either turns
/// off glibc's dynamic threshold adjustment. Process-wide; safe to call at any time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn retain_freed_memory(mmap_threshold: usize, trim_threshold: usize) {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    let clamp = |v: usize| v.min(i32::MAX as usize) as i32;
    // SAFETY: mallopt only changes allocator parameters (it takes glibc's arena locks itself)
    unsafe {
        mallopt(M_MMAP_THRESHOLD, clamp(mmap_threshold));
        mallopt(M_TRIM_THRESHOLD, clamp(trim_threshold));
    }
}

/// Keeps freed memory in the process (glibc only; a no-op elsewhere).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn retain_freed_memory(_mmap_threshold: usize, _trim_threshold: usize) {}
