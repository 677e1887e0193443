//! Elementwise activations `y = σ(x)`: relu, leaky_relu, tanh, sigmoid, gelu (erf form), silu.
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
}

impl ActivationKind {
    /// The `model.json` type name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::LeakyRelu(_) => "leaky_relu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::Gelu => "gelu",
            Self::Silu => "silu",
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
    /// `σ'(x) ⊙ v` for `K` stacked `v`.
    fn mul_d1<T: Float>(&self, c: &Ctx<T>, v: &[T], k: usize) -> Vec<T> {
        let s = self.size();
        let (x, y) = (c.x, c.y);
        match self.kind {
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
            kind => x.iter().map(|&v| kind.value(v)).collect(),
        };
        (y, Aux::None)
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        self.mul_d1(c, dx, k)
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.mul_d1(c, g, k)
    }
    fn hvp_needs_g(&self, rx: bool, _dp: bool, want_input: bool) -> bool {
        rx && want_input && !self.kind.is_piecewise_linear()
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
        let mut out = self.mul_d1(c, rg, k);
        if let (Some(rx), false) = (rx, self.kind.is_piecewise_linear()) {
            let two = T::of(2.0);
            match self.kind {
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
