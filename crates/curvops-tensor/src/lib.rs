//! Dense numerical kernels that the rest of curvops stands on.
//!
//! * [`Float`]: the scalar trait (implemented for `f32` and `f64`); everything numeric in
//!   curvops is generic over it.
//! * [`gemm`]: `C ← β·C + α·op(A)·op(B)` on row-major slices, computed by faer's GEMM.
//! * [`conv`]: convolution / pooling geometry with `im2col` and `col2im` (PyTorch semantics:
//!   stride, zero padding, dilation, rectangular kernels).
//! * [`rng`]: seeded and counter-based (keyed) random numbers.
//! * [`threads`]: the process-wide thread count used for GEMM parallelism.
//!
//! Data layout convention used across the project: a batch of `N` samples whose per-sample
//! shape has `S` entries is a row-major `[N, S]` slice; a block of `K` tangents of such a batch
//! is a row-major `[N, K, S]` slice (sample-major, then tangent index). With this layout a
//! linear layer applies to all `N·K` tangent rows with a single GEMM.

// Index loops over several arrays are the clearest form for numerical kernels.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

pub mod alloc;
pub mod conv;
pub mod float;
pub mod gemm;
pub mod ops;
pub mod rng;
pub mod simd;
pub mod threads;
pub mod vmath;

pub use float::Float;
pub use gemm::{gemm, Trans};
