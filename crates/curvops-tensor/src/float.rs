//! The scalar trait.

use std::fmt::{Debug, Display};

/// A real floating-point scalar: `f32` or `f64`.
///
/// Combines faer's [`faer::traits::RealField`] (so that faer's GEMM, decompositions and
/// matrix-free solvers accept it) with [`num_traits::Float`] (elementary functions), plus the
/// few extras curvops needs (`erf` for GELU, conversions, the dtype name).
pub trait Float:
    faer::traits::RealField
    + num_traits::Float
    + num_traits::FloatConst
    + Copy
    + Default
    + Send
    + Sync
    + Debug
    + Display
    + std::iter::Sum
    + crate::vmath::SliceMath
    + 'static
{
    /// The dtype name used in files and JSON output: `"f32"` or `"f64"`.
    const DTYPE: &'static str;
    /// Size in bytes.
    const BYTES: usize;
    /// Converts from `f64` (rounding for `f32`).
    fn of(x: f64) -> Self;
    /// Converts to `f64` (exactly).
    fn as_f64(self) -> f64;
    /// The error function `erf(x) = 2/√π ∫₀ˣ e^{-t²} dt`.
    fn erf_(self) -> Self;
    /// Reads one little-endian value from exactly `Self::BYTES` bytes.
    fn from_le_bytes(b: &[u8]) -> Self;
    /// Appends the little-endian bytes of `self`.
    fn write_le_bytes(self, out: &mut Vec<u8>);
    /// `if cond { a } else { b }` without a branch (bit masks), for data-dependent selects.
    fn select(cond: bool, a: Self, b: Self) -> Self;
}

impl Float for f32 {
    const DTYPE: &'static str = "f32";
    const BYTES: usize = 4;
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn erf_(self) -> Self {
        libm::erff(self)
    }
    #[inline]
    fn from_le_bytes(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline]
    fn write_le_bytes(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline(always)]
    fn select(cond: bool, a: Self, b: Self) -> Self {
        let m = (cond as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "f64";
    const BYTES: usize = 8;
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline]
    fn erf_(self) -> Self {
        libm::erf(self)
    }
    #[inline]
    fn from_le_bytes(b: &[u8]) -> Self {
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    #[inline]
    fn write_le_bytes(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline(always)]
    fn select(cond: bool, a: Self, b: Self) -> Self {
        let m = (cond as u64).wrapping_neg();
        f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_values() {
        assert!((1.0f64.erf_() - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!(((-0.5f32).erf_() + 0.520_499_9).abs() < 1e-6);
        assert_eq!(f64::of(0.25).as_f64(), 0.25);
        assert_eq!(f32::select(true, 1.0, 2.0), 1.0);
        assert_eq!(f64::select(false, 1.0, -0.0).to_bits(), (-0.0f64).to_bits());
    }
}
