//! Elementwise activations `y = σ(x)`: relu, leaky_relu, tanh, sigmoid, gelu (erf form and
//! tanh approximation), silu.
//!
//! Rules: `dy = σ'(x) dx`, `g_x = σ'(x) g`, and the R-op
//! `R(g_x) = σ''(x) R(x) g + σ'(x) R(g)`.
//!
//! | σ | σ' | σ'' |
//! |---|---|---|
//! | relu | `[x > 0]` (0 at 0, as PyTorch) | 0 |
//! | leaky_relu(a) | `1` if `x > 0` else `a` (a at 0, as PyTorch) | 0 |
//! | tanh | `1 − y²` | `−2y(1 − y²)` |
//! | sigmoid | `y(1 − y)` | `y(1 − y)(1 − 2y)` |
//! | gelu `xΦ(x)` | `Φ(x) + xφ(x)` | `φ(x)(2 − x²)` |
//! | silu `x s(x)` | `s(1 + x(1 − s))` | `s(1 − s)(2 + x(1 − 2s))` |
//! | gelu tanh `½x(1 + t)` | `½(1 + t) + ½x(1 − t²)u'` | `(1 − t²)(u' − x t u'² + ½x u'')` |
//!
//! For the tanh approximation of gelu (PyTorch's `F.gelu(x, approximate='tanh')`),
//! `u = c(x + a x³)` with `c = √(2/π)`, `a = 0.044715`, `t = tanh(u)`, `u' = c(1 + 3a x²)` and
//! `u'' = 6 c a x`. Its forward pass evaluates `t` with the vectorized slice `tanh`
//! ([`curvops_tensor::vmath::tanh`]) and keeps it (`Aux::Cols(t)`); the rules pass it to the
//! kernels in place of `y` (recomputing it for a context without it).

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::simd::with_simd;
use curvops_tensor::Float;

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationKind {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, else `slope · x`.
    LeakyRelu(f64),
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^{−x})`.
    Sigmoid,
    /// `x Φ(x)` with the exact normal CDF `Φ`.
    Gelu,
    /// `x · sigmoid(x)`.
    Silu,
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, PyTorch's gelu with `approximate='tanh'`
    /// (type name `"gelu"`; [`ActivationKind::approximate`] tells it from [`ActivationKind::Gelu`]).
    GeluTanh,
}

/// `√(2/π)`.
const GELU_C: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation of gelu.
const GELU_A: f64 = 0.044_715;

/// `u = √(2/π)(x + 0.044715x³)`, the argument of `tanh` in the tanh approximation of gelu.
#[inline(always)]
fn gelu_tanh_arg<T: Float>(x: T) -> T {
    T::of(GELU_C) * (x + T::of(GELU_A) * x * x * x)
}

/// `σ'(x)` of the tanh approximation of gelu, given `t = tanh(u(x))`.
#[inline(always)]
fn gelu_tanh_d1_t<T: Float>(x: T, t: T) -> T {
    let half = T::of(0.5);
    let du = T::of(GELU_C) * (T::one() + T::of(3.0 * GELU_A) * x * x);
    half * (T::one() + t) + half * x * (T::one() - t * t) * du
}

/// `σ''(x)` of the tanh approximation of gelu, given `t = tanh(u(x))`.
#[inline(always)]
fn gelu_tanh_d2_t<T: Float>(x: T, t: T) -> T {
    let du = T::of(GELU_C) * (T::one() + T::of(3.0 * GELU_A) * x * x);
    let ddu = T::of(6.0 * GELU_C * GELU_A) * x;
    (T::one() - t * t) * (du - x * t * du * du + T::of(0.5) * x * ddu)
}

/// Entries per chunk of [`gelu_tanh_chunks`] (its buffers stay in L1).
const GELU_CHUNK: usize = 512;

/// Calls `f(offset, x_c, t_c)` for consecutive chunks `x_c` of `x` (starting at `offset`) with
/// `t_c = tanh(u(x_c))`, through stack buffers: no pass over the whole batch for `u` or `t`.
#[inline(always)]
fn gelu_tanh_chunks<T: Float>(x: &[T], mut f: impl FnMut(usize, &[T], &[T])) {
    let mut u = [T::zero(); GELU_CHUNK];
    let mut t = [T::zero(); GELU_CHUNK];
    for (ci, xc) in x.chunks(GELU_CHUNK).enumerate() {
        let m = xc.len();
        with_simd(
            #[inline(always)]
            || {
                for (uo, &v) in u[..m].iter_mut().zip(xc) {
                    *uo = gelu_tanh_arg(v);
                }
            },
        );
        curvops_tensor::vmath::tanh(&u[..m], &mut t[..m]);
        f(ci * GELU_CHUNK, xc, &t[..m]);
    }
}

/// `t = tanh(u(x))` for every entry of `x` (vectorized `tanh`).
fn gelu_tanh_t<T: Float>(x: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    gelu_tanh_chunks(x, |_, _, t| out.extend_from_slice(t));
    out
}

impl ActivationKind {
    /// The `model.json` type name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::LeakyRelu(_) => "leaky_relu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::Gelu | Self::GeluTanh => "gelu",
            Self::Silu => "silu",
        }
    }

    /// PyTorch's `approximate` argument of gelu: `"tanh"` for [`ActivationKind::GeluTanh`],
    /// `"none"` for [`ActivationKind::Gelu`] and every other kind.
    pub fn approximate(&self) -> &'static str {
        match self {
            Self::GeluTanh => "tanh",
            _ => "none",
        }
    }

    /// `σ(x)`.
    #[inline]
    pub fn value<T: Float>(&self, x: T) -> T {
        match *self {
            Self::Relu => {
                if x > T::zero() {
                    x
                } else {
                    T::zero()
                }
            }
            Self::LeakyRelu(a) => {
                if x > T::zero() {
                    x
                } else {
                    T::of(a) * x
                }
            }
            Self::Tanh => x.tanh(),
            Self::Sigmoid => sigmoid(x),
            Self::Gelu => x * normal_cdf(x),
            Self::Silu => x * sigmoid(x),
            Self::GeluTanh => T::of(0.5) * x * (T::one() + gelu_tanh_arg(x).tanh()),
        }
    }

    /// `σ'(x)`, given `x` and `y = σ(x)`.
    #[inline]
    pub fn d1<T: Float>(&self, x: T, y: T) -> T {
        match *self {
            Self::Relu => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Self::LeakyRelu(a) => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::of(a)
                }
            }
            Self::Tanh => T::one() - y * y,
            Self::Sigmoid => y * (T::one() - y),
            Self::Gelu => normal_cdf(x) + x * normal_pdf(x),
            Self::Silu => {
                let s = sigmoid(x);
                s * (T::one() + x * (T::one() - s))
            }
            Self::GeluTanh => gelu_tanh_d1_t(x, gelu_tanh_arg(x).tanh()),
        }
    }

    /// `σ''(x)`, given `x` and `y = σ(x)`.
    #[inline]
    pub fn d2<T: Float>(&self, x: T, y: T) -> T {
        let two = T::of(2.0);
        match *self {
            Self::Relu | Self::LeakyRelu(_) => T::zero(),
            Self::Tanh => -two * y * (T::one() - y * y),
            Self::Sigmoid => y * (T::one() - y) * (T::one() - two * y),
            Self::Gelu => normal_pdf(x) * (two - x * x),
            Self::Silu => {
                let s = sigmoid(x);
                s * (T::one() - s) * (two + x * (T::one() - two * s))
            }
            Self::GeluTanh => gelu_tanh_d2_t(x, gelu_tanh_arg(x).tanh()),
        }
    }

    /// Whether `σ'' ≡ 0` (piecewise linear).
    pub fn is_piecewise_linear(&self) -> bool {
        matches!(self, Self::Relu | Self::LeakyRelu(_))
    }
}

/// Numerically stable logistic function.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Standard normal CDF `Φ(x) = (1 + erf(x/√2))/2`.
#[inline]
pub fn normal_cdf<T: Float>(x: T) -> T {
    T::of(0.5) * (T::one() + (x * T::FRAC_1_SQRT_2()).erf_())
}

/// Standard normal density `φ(x)`.
#[inline]
pub fn normal_pdf<T: Float>(x: T) -> T {
    T::of(0.398_942_280_401_432_7) * (T::of(-0.5) * x * x).exp()
}

/// An elementwise activation layer.
#[derive(Clone, Debug)]
pub struct Activation {
    kind: ActivationKind,
    shape: Vec<usize>,
}

/// `out[n, k, i] = f(x[n, i], y[n, i]) · v[n, k, i]`, monomorphized per `f` so it vectorizes.
#[inline(always)]
fn scaled<T: Float>(x: &[T], y: &[T], v: &[T], k: usize, s: usize, f: impl Fn(T, T) -> T) -> Vec<T> {
    with_simd(
        #[inline(always)]
        || scaled_kernel(x, y, v, k, s, f),
    )
}

#[inline(always)]
fn scaled_kernel<T: Float>(x: &[T], y: &[T], v: &[T], k: usize, s: usize, f: impl Fn(T, T) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for (xs, ys) in x.chunks_exact(s).zip(y.chunks_exact(s)) {
        for _ in 0..k {
            let o = out.len();
            let vs = &v[o..o + s];
            out.extend(xs.iter().zip(ys).zip(vs).map(|((&a, &b), &c)| f(a, b) * c));
        }
    }
    out
}

/// `out[n, k, i] += f(x[n, i], y[n, i]) · g[n, i] · r[n, k, i]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_scaled2<T: Float>(x: &[T], y: &[T], g: &[T], r: &[T], k: usize, s: usize, out: &mut [T], f: impl Fn(T, T) -> T) {
    with_simd(
        #[inline(always)]
        || add_scaled2_kernel(x, y, g, r, k, s, out, f),
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_scaled2_kernel<T: Float>(
    x: &[T],
    y: &[T],
    g: &[T],
    r: &[T],
    k: usize,
    s: usize,
    out: &mut [T],
    f: impl Fn(T, T) -> T,
) {
    for (row, ((xs, ys), gs)) in x.chunks_exact(s).zip(y.chunks_exact(s)).zip(g.chunks_exact(s)).enumerate() {
        for kk in 0..k {
            let o = (row * k + kk) * s;
            for ((((d, &rv), &a), &b), &gv) in out[o..o + s].iter_mut().zip(&r[o..o + s]).zip(xs).zip(ys).zip(gs) {
                *d += f(a, b) * gv * rv;
            }
        }
    }
}

impl Activation {
    /// Activation `kind` on per-sample shape `shape`.
    pub fn new(kind: ActivationKind, shape: Vec<usize>) -> Self {
        Self { kind, shape }
    }
    /// The activation function.
    pub fn activation(&self) -> ActivationKind {
        self.kind
    }
    fn size(&self) -> usize {
        self.shape.iter().product()
    }
    /// `t = tanh(u(x))` as kept by the forward pass of [`ActivationKind::GeluTanh`] (`None` for
    /// other kinds, or a context without it).
    fn kept_t<'a, T: Float>(&self, c: &Ctx<'a, T>) -> Option<&'a [T]> {
        match c.aux {
            Aux::Cols(t) if self.kind == ActivationKind::GeluTanh && t.len() == c.x.len() => Some(t),
            _ => None,
        }
    }
    /// `σ'(x) ⊙ v` for `K` stacked `v`; `t` is `tanh(u(x))` for [`ActivationKind::GeluTanh`]
    /// (computed here when `None`), unused otherwise.
    fn mul_d1<T: Float>(&self, c: &Ctx<T>, v: &[T], k: usize, t: Option<&[T]>) -> Vec<T> {
        let s = self.size();
        let (x, y) = (c.x, c.y);
        let t = t.or_else(|| self.kept_t(c));
        match self.kind {
            ActivationKind::GeluTanh => match t {
                Some(t) => scaled(x, t, v, k, s, gelu_tanh_d1_t),
                None if k == 1 => {
                    // one pass: σ'(x) from t chunk by chunk
                    let mut out = Vec::with_capacity(v.len());
                    gelu_tanh_chunks(x, |o, xc, tc| {
                        let vc = &v[o..o + xc.len()];
                        with_simd(
                            #[inline(always)]
                            || out.extend(xc.iter().zip(tc).zip(vc).map(|((&a, &b), &c)| gelu_tanh_d1_t(a, b) * c)),
                        )
                    });
                    out
                }
                None => scaled(x, &gelu_tanh_t(x), v, k, s, gelu_tanh_d1_t),
            },
            ActivationKind::Relu => scaled(x, y, v, k, s, |a, _| if a > T::zero() { T::one() } else { T::zero() }),
            ActivationKind::LeakyRelu(sl) => {
                let sl = T::of(sl);
                scaled(x, y, v, k, s, |a, _| if a > T::zero() { T::one() } else { sl })
            }
            ActivationKind::Tanh => scaled(x, y, v, k, s, |_, b| T::one() - b * b),
            ActivationKind::Sigmoid => scaled(x, y, v, k, s, |_, b| b * (T::one() - b)),
            kind @ (ActivationKind::Gelu | ActivationKind::Silu) => scaled(x, y, v, k, s, |a, b| kind.d1(a, b)),
        }
    }
}

impl<T: Float> Layer<T> for Activation {
    fn kind(&self) -> &'static str {
        self.kind.name()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn in_shape(&self) -> &[usize] {
        &self.shape
    }
    fn out_shape(&self) -> &[usize] {
        &self.shape
    }
    fn forward(&self, _p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        let y: Vec<T> = match self.kind {
            ActivationKind::Relu => with_simd(
                #[inline(always)]
                || x.iter().map(|&v| if v > T::zero() { v } else { T::zero() }).collect(),
            ),
            ActivationKind::LeakyRelu(a) => {
                let a = T::of(a);
                with_simd(
                    #[inline(always)]
                    || x.iter().map(|&v| if v > T::zero() { v } else { a * v }).collect(),
                )
            }
            ActivationKind::Tanh => {
                let mut y = vec![T::zero(); x.len()];
                curvops_tensor::vmath::tanh(x, &mut y);
                y
            }
            ActivationKind::Sigmoid => {
                let mut y = vec![T::zero(); x.len()];
                curvops_tensor::vmath::sigmoid(x, &mut y);
                y
            }
            ActivationKind::GeluTanh => {
                // t = tanh(u(x)) is kept for the rules (Aux::Cols)
                let mut y = Vec::with_capacity(x.len());
                let mut t = Vec::with_capacity(x.len());
                gelu_tanh_chunks(x, |_, xc, tc| {
                    t.extend_from_slice(tc);
                    with_simd(
                        #[inline(always)]
                        || y.extend(xc.iter().zip(tc).map(|(&v, &tv)| T::of(0.5) * v * (T::one() + tv))),
                    )
                });
                return (y, Aux::Cols(t));
            }
            kind => x.iter().map(|&v| kind.value(v)).collect(),
        };
        (y, Aux::None)
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        self.mul_d1(c, dx, k, None)
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.mul_d1(c, g, k, None)
    }
    fn hvp_needs_g(&self, rx: bool, _dp: bool, want_input: bool) -> bool {
        rx && want_input && !self.kind.is_piecewise_linear()
    }
    /// Elementwise: `d = σ''(x) ⊙ g`.
    fn input_hessian_diag(&self, c: &Ctx<T>, g: &[T]) -> Option<Vec<T>> {
        Some(c.x.iter().zip(c.y).zip(g).map(|((&x, &y), &gv)| self.kind.d2(x, y) * gv).collect())
    }
    fn hvp_backward(
        &self,
        c: &Ctx<T>,
        rx: Option<&[T]>,
        _dp: &ParamIn<T>,
        g: &[T],
        rg: &[T],
        k: usize,
        _rgrad: &mut ParamOut<T>,
        want_input: bool,
    ) -> Option<Vec<T>> {
        if !want_input {
            return None;
        }
        let s = self.size();
        let t: Option<std::borrow::Cow<[T]>> = (self.kind == ActivationKind::GeluTanh).then(|| match self.kept_t(c) {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(gelu_tanh_t(c.x)),
        });
        let mut out = self.mul_d1(c, rg, k, t.as_deref());
        if let (Some(rx), false) = (rx, self.kind.is_piecewise_linear()) {
            let two = T::of(2.0);
            match self.kind {
                ActivationKind::GeluTanh => {
                    let t = t.as_deref().unwrap_or_default();
                    add_scaled2(c.x, t, g, rx, k, s, &mut out, gelu_tanh_d2_t)
                }
                ActivationKind::Tanh => {
                    add_scaled2(c.x, c.y, g, rx, k, s, &mut out, |_, b| -two * b * (T::one() - b * b))
                }
                ActivationKind::Sigmoid => {
                    add_scaled2(c.x, c.y, g, rx, k, s, &mut out, |_, b| b * (T::one() - b) * (T::one() - two * b))
                }
                kind => add_scaled2(c.x, c.y, g, rx, k, s, &mut out, |a, b| kind.d2(a, b)),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{check_rules, rel_err};
    use curvops_tensor::rng::Rng;

    fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| r.normal()).collect()
    }

    const ALL: [ActivationKind; 7] = [
        ActivationKind::Relu,
        ActivationKind::LeakyRelu(0.07),
        ActivationKind::Tanh,
        ActivationKind::Sigmoid,
        ActivationKind::Gelu,
        ActivationKind::GeluTanh,
        ActivationKind::Silu,
    ];

    #[test]
    fn rules_of_every_kind() {
        let mut rng = Rng::new(21);
        for kind in ALL {
            for (shape, n) in [(vec![7], 1), (vec![2, 3], 3), (vec![3, 1, 4], 3)] {
                let l = Activation::new(kind, shape.clone());
                let x = randn(&mut rng, n * Layer::<f64>::in_size(&l));
                let name = format!("{} ({}) {shape:?} n={n}", kind.name(), kind.approximate());
                check_rules(&name, &l, &[], &[x], &[true], n, 1e-6);
            }
        }
    }

    /// The tanh approximation written independently: `tanh` through `exp`, derivatives through
    /// `sech²`.
    fn gelu_tanh_ref(x: f64) -> (f64, f64, f64) {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let u = c * (x + 0.044715 * x.powi(3));
        let e = (2.0 * u).exp();
        let t = if e.is_finite() { (e - 1.0) / (e + 1.0) } else { 1.0 };
        let sech2 = 4.0 / (u.exp() + (-u).exp()).powi(2);
        let du = c * (1.0 + 0.134145 * x * x);
        let ddu = c * 0.26829 * x;
        let v = 0.5 * x * (1.0 + t);
        let d1 = 0.5 * (1.0 + t) + 0.5 * x * sech2 * du;
        // d/dx [½(1 + t)] = ½ sech² u';  d/dx [½x sech² u'] = ½ sech² u' + ½x(−2t sech² u'²) + ½x sech² u''
        let d2 = sech2 * du - x * t * sech2 * du * du + 0.5 * x * sech2 * ddu;
        (v, d1, d2)
    }

    #[test]
    fn gelu_tanh_matches_independent_formula_and_pytorch() {
        let g = ActivationKind::GeluTanh;
        assert_eq!(g.name(), "gelu");
        assert_eq!(g.approximate(), "tanh");
        assert_eq!(ActivationKind::Gelu.approximate(), "none");
        assert!(!g.is_piecewise_linear());
        let mut x = -9.0f64;
        while x < 9.0 {
            let (v, d1, d2) = gelu_tanh_ref(x);
            let y = g.value(x);
            assert!((y - v).abs() <= 1e-14 * (1.0 + v.abs()), "value at {x}: {y} vs {v}");
            assert!((g.d1(x, y) - d1).abs() <= 1e-13, "d1 at {x}: {} vs {d1}", g.d1(x, y));
            assert!((g.d2(x, y) - d2).abs() <= 1e-13, "d2 at {x}: {} vs {d2}", g.d2(x, y));
            // derivatives by central differences
            let h = 1e-5;
            let fd1 = (g.value(x + h) - g.value(x - h)) / (2.0 * h);
            let fd2 = (g.d1(x + h, 0.0) - g.d1(x - h, 0.0)) / (2.0 * h);
            assert!((fd1 - d1).abs() < 1e-8, "fd d1 at {x}");
            assert!((fd2 - d2).abs() < 1e-8, "fd d2 at {x}");
            x += 0.0137;
        }
        // PyTorch's documented formula `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))` evaluated with
        // Python's `math` module (C libm)
        for (x, want) in
            [(1.0f64, 0.841_191_990_608_276_8), (-1.0, -0.158_808_009_391_723_24), (2.5, 2.484_915_733_910_001)]
        {
            assert!((g.value(x) - want).abs() < 1e-14, "gelu_tanh({x}) = {}", g.value(x));
        }
        // close to the exact gelu
        for x in [-3.0f64, -1.0, -0.2, 0.0, 0.5, 2.0] {
            assert!((g.value(x) - ActivationKind::Gelu.value(x)).abs() < 1e-3);
        }
    }

    /// The layer's batched (vectorized) paths agree with the scalar `value`/`d1`/`d2`, in f64
    /// and f32.
    #[test]
    fn gelu_tanh_layer_paths_match_scalar_functions() {
        let mut rng = Rng::new(4);
        let (n, k, s) = (3, 2, 37);
        let l = Activation::new(ActivationKind::GeluTanh, vec![s]);
        let x: Vec<f64> = randn(&mut rng, n * s).iter().map(|v| 3.0 * v).collect();
        let v = randn(&mut rng, n * k * s);
        let g = randn(&mut rng, n * s);
        let (y, aux) = l.forward(&[], &x, n);
        let xr: &[f64] = &x;
        let c = Ctx { p: &[], x: &x, xs: std::slice::from_ref(&xr), y: &y, aux: &aux, n };
        let kind = ActivationKind::GeluTanh;
        let want_y: Vec<f64> = x.iter().map(|&a| kind.value(a)).collect();
        assert!(rel_err(&y, &want_y) < 1e-15);
        let jv = l.jvp_input(&c, &v, k);
        let rgx = l.hvp_backward(&c, Some(&v), &[], &g, &v, k, &mut [], true).unwrap();
        for i in 0..n {
            for kk in 0..k {
                for j in 0..s {
                    let (a, o) = (x[i * s + j], (i * k + kk) * s + j);
                    let d1 = kind.d1(a, 0.0);
                    assert!((jv[o] - d1 * v[o]).abs() < 1e-14 * (1.0 + jv[o].abs()));
                    let want = d1 * v[o] + kind.d2(a, 0.0) * g[i * s + j] * v[o];
                    assert!((rgx[o] - want).abs() < 1e-13 * (1.0 + want.abs()));
                }
            }
        }
        // f32: the vectorized tanh kernel is accurate to a few ulps
        let x32: Vec<f32> = x.iter().map(|&a| a as f32).collect();
        let (y32, _) = l.forward(&[], &x32, n);
        for (a, b) in y32.iter().zip(&x32) {
            let want = kind.value(*b as f64);
            assert!((*a as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "f32 {b}: {a} vs {want}");
        }
    }
}
