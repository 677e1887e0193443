//! Deterministic random numbers.
//!
//! Two generators, both pure functions of their seed:
//! * [`Rng`]: a sequential generator (SplitMix64 state update, then a strong output mix) for
//!   probes of randomized estimators.
//! * [`keyed_u64`] / [`keyed_uniform`] / [`keyed_normal`]: counter-based draws addressed by a
//!   key `(seed, a, b, c)`, e.g. (seed, sample index in the data set, draw index, output index),
//!   so Monte-Carlo quantities do not depend on batch size or thread count.

use crate::Float;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (a bijective 64-bit mixer).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit value determined by the key `(seed, a, b, c)`.
#[inline]
pub fn keyed_u64(seed: u64, a: u64, b: u64, c: u64) -> u64 {
    let mut h = mix64(seed.wrapping_add(GOLDEN));
    h = mix64(h ^ a.wrapping_mul(0xD6E8_FEB8_6659_FD93).wrapping_add(GOLDEN));
    h = mix64(h ^ b.wrapping_mul(0xA076_1D64_78BD_642F).wrapping_add(GOLDEN));
    mix64(h ^ c.wrapping_mul(0xE703_7ED1_A0B4_28DB).wrapping_add(GOLDEN))
}

/// Uniform in the open interval (0, 1) from 53 random bits.
#[inline]
pub fn u64_to_open01(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// A uniform draw in (0, 1) keyed by `(seed, a, b, c)`.
#[inline]
pub fn keyed_uniform(seed: u64, a: u64, b: u64, c: u64) -> f64 {
    u64_to_open01(keyed_u64(seed, a, b, c))
}

/// A standard normal draw keyed by `(seed, a, b, c)` (Box–Muller on two keyed uniforms).
#[inline]
pub fn keyed_normal(seed: u64, a: u64, b: u64, c: u64) -> f64 {
    let u1 = keyed_uniform(seed, a, b, c.wrapping_mul(2));
    let u2 = keyed_uniform(seed, a, b, c.wrapping_mul(2).wrapping_add(1));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A sequential deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: mix64(seed ^ 0x5851_F42D_4C95_7F2D), spare_normal: None }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in (0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        u64_to_open01(self.next_u64())
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal (Box–Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * t.sin());
        r * t.cos()
    }

    /// ±1 with equal probability.
    #[inline]
    pub fn rademacher(&mut self) -> f64 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Fills `x` with standard normals.
    pub fn fill_normal<T: Float>(&mut self, x: &mut [T]) {
        for v in x {
            *v = T::of(self.normal());
        }
    }

    /// Fills `x` with Rademacher signs: one 64-bit draw gives the signs of 64 consecutive
    /// entries (bit `i` of the draw for entry `i` of the chunk; 0 → +1, 1 → −1).
    pub fn fill_rademacher<T: Float>(&mut self, x: &mut [T]) {
        let (one, minus) = (T::one(), -T::one());
        for chunk in x.chunks_mut(64) {
            let bits = self.next_u64();
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = if (bits >> i) & 1 == 0 { one } else { minus };
            }
        }
    }

    /// A random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            s += z;
            s2 += z * z;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        // 4 standard errors: se(mean) = 1/sqrt(n), se(var) ≈ sqrt(2/n)
        assert!(mean.abs() < 4.0 / (n as f64).sqrt());
        assert!((var - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt());
        let mut u = 0.0;
        for i in 0..n as u64 {
            u += keyed_uniform(3, i, 0, 0);
        }
        assert!((u / n as f64 - 0.5).abs() < 4.0 * (1.0 / 12.0 / n as f64).sqrt());
        assert_eq!(keyed_u64(1, 2, 3, 4), keyed_u64(1, 2, 3, 4));
        assert_ne!(keyed_u64(1, 2, 3, 4), keyed_u64(1, 2, 4, 3));
        assert_eq!(Rng::new(5).next_u64(), Rng::new(5).next_u64());
    }
}
