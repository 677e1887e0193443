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

use super::{mul_broadcast_k, Aux, Ctx, Layer, ParamIn, ParamOut};
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

impl Activation {
    /// Activation `kind` on per-sample shape `shape`.
    pub fn new(kind: ActivationKind, shape: Vec<usize>) -> Self {
        Self { kind, shape }
    }
    /// The activation function.
    pub fn activation(&self) -> ActivationKind {
        self.kind
    }
    fn d1_all<T: Float>(&self, c: &Ctx<T>) -> Vec<T> {
        c.x.iter().zip(c.y).map(|(&x, &y)| self.kind.d1(x, y)).collect()
    }
}

impl<T: Float> Layer<T> for Activation {
    fn kind(&self) -> &'static str {
        self.kind.name()
    }
    fn in_shape(&self) -> &[usize] {
        &self.shape
    }
    fn out_shape(&self) -> &[usize] {
        &self.shape
    }
    fn forward(&self, _p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        (x.iter().map(|&v| self.kind.value(v)).collect(), Aux::None)
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let s = <Self as Layer<T>>::in_size(self);
        mul_broadcast_k(&self.d1_all(c), dx, c.n, k, s)
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let s = <Self as Layer<T>>::in_size(self);
        mul_broadcast_k(&self.d1_all(c), g, c.n, k, s)
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
        let s = <Self as Layer<T>>::in_size(self);
        let mut out = mul_broadcast_k(&self.d1_all(c), rg, c.n, k, s);
        if let (Some(rx), false) = (rx, self.kind.is_piecewise_linear()) {
            // σ''(x) ⊙ g, broadcast over the K tangents of R(x)
            let d2g: Vec<T> = c
                .x
                .iter()
                .zip(c.y)
                .zip(g)
                .map(|((&x, &y), &gv)| self.kind.d2(x, y) * gv)
                .collect();
            let extra = mul_broadcast_k(&d2g, rx, c.n, k, s);
            for (o, e) in out.iter_mut().zip(&extra) {
                *o += *e;
            }
        }
        Some(out)
    }
}
