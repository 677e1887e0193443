//! Choosing the prior precision of a fitted Laplace approximation, and the metrics of its
//! predictive on a data set — what `curvops laplace fit|evaluate` and the Python package call.
//!
//! The prior precision `τ` of `P = h·H + diag(τ)` is fixed, chosen by maximizing the log
//! marginal likelihood ([`optimize_marglik`], scalar or one `τ` per tensor, `σ` too for
//! regression unless it is given), or by a grid search over scalar `τ` minimizing the
//! validation NLL of the linearized predictive ([`gridsearch`]).

use super::marglik::{gridsearch, optimize_marglik, MarglikOptions, PriorStructure};
use super::{LaplaceError, LaplaceFit, Likelihood, PriorPrecision};
use crate::metrics;
use curvops_nn::{Dataset, Network, Targets};
use curvops_tensor::Float;

/// How to choose the prior precision.
#[derive(Clone, Debug)]
pub enum PriorSelection<'a, T: Float> {
    /// A given `τ` (scalar, or one per parameter group).
    Fixed(PriorPrecision),
    /// Maximize the log marginal likelihood over a scalar or layerwise `τ`.
    Marglik(PriorStructure),
    /// Minimize the validation NLL of the linearized predictive over scalar `τ ∈ grid`.
    Gridsearch {
        /// The validation data.
        val: &'a Dataset<T>,
        /// The candidate values of `τ`.
        grid: Vec<f64>,
    },
}

/// The prior a [`PriorSelection`] chose.
#[derive(Clone, Debug)]
pub struct PriorChoice {
    /// The prior precision `τ`.
    pub prior: PriorPrecision,
    /// The regression noise `σ` (1 for classification).
    pub sigma: f64,
    /// `"fixed"`, `"marglik"` or `"gridsearch"`.
    pub method: &'static str,
    /// For a grid search: every `(τ, validation NLL)`.
    pub grid: Option<Vec<(f64, f64)>>,
}

/// Chooses the prior precision of `fit` (on `net`'s outputs) by `how`. `sigma` is the given
/// regression noise (`None`: 1, and the marginal likelihood optimizes it for regression);
/// `temperature` is `T` of `h = 1/(σ²T)`.
pub fn select_prior<T: Float>(
    fit: &LaplaceFit<T>,
    net: &Network<T>,
    how: &PriorSelection<'_, T>,
    sigma: Option<f64>,
    temperature: f64,
) -> Result<PriorChoice, LaplaceError> {
    if sigma.is_some() && fit.likelihood != Likelihood::Regression {
        return Err(LaplaceError("a noise σ applies to regression (mse) models only".into()));
    }
    let s = sigma.unwrap_or(1.0);
    Ok(match how {
        PriorSelection::Fixed(prior) => PriorChoice { prior: prior.clone(), sigma: s, method: "fixed", grid: None },
        PriorSelection::Marglik(structure) => {
            let mo = MarglikOptions {
                prior_structure: *structure,
                optimize_sigma: fit.likelihood == Likelihood::Regression && sigma.is_none(),
                sigma: s,
                temperature,
                ..Default::default()
            };
            let r = optimize_marglik(fit, &mo)?;
            PriorChoice { prior: r.prior, sigma: r.sigma, method: "marglik", grid: None }
        }
        PriorSelection::Gridsearch { val, grid } => {
            let (best, all) = gridsearch(fit, net, val, grid, s, temperature)?;
            PriorChoice { prior: PriorPrecision::Scalar(best), sigma: s, method: "gridsearch", grid: Some(all) }
        }
    })
}

/// Metrics of a predictive on a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PredictiveMetrics {
    /// Classification: accuracy, mean NLL of the labels, expected calibration error, mean
    /// Brier score (summed over classes) and the mean maximal probability.
    Classification {
        /// Fraction of correct arg-max predictions.
        accuracy: f64,
        /// `−1/N Σ_n log p_n[y_n]`.
        nll: f64,
        /// Expected calibration error over equal-width confidence bins.
        ece: f64,
        /// `1/N Σ_n ‖p_n − e_{y_n}‖²`.
        brier: f64,
        /// `1/N Σ_n max_c p_n[c]`.
        confidence: f64,
    },
    /// Regression: `MSE = 1/N Σ (y − μ)²` over all outputs and the Gaussian predictive's
    /// `NLL = 1/N Σ ½(log 2πv + (y − μ)²/v)`.
    Regression {
        /// Mean squared error of the predictive mean.
        mse: f64,
        /// Mean Gaussian negative log-likelihood.
        nll: f64,
    },
    /// The data's targets do not fit the likelihood (no metrics).
    None,
}

impl PredictiveMetrics {
    /// The metrics of predictive `mean` (class probabilities `[N, C]` for classification,
    /// means `[N, C]` for regression) with variances `var` (regression, same shape) on `d`;
    /// `bins` ECE bins.
    pub fn of<T: Float>(d: &Dataset<T>, lik: Likelihood, mean: &[f64], var: &[f64], c: usize, bins: usize) -> Self {
        match (&d.y, lik) {
            (Targets::Classes(y), Likelihood::Classification) => Self::Classification {
                accuracy: metrics::accuracy(mean, c, y),
                nll: metrics::nll(mean, c, y),
                ece: metrics::ece(mean, c, y, bins),
                brier: metrics::brier(mean, c, y),
                confidence: metrics::max_prob(mean, c).iter().sum::<f64>() / y.len() as f64,
            },
            (Targets::Dense(t), Likelihood::Regression) => {
                let n = t.len() as f64;
                let mse = t.iter().zip(mean).map(|(y, m)| (y.as_f64() - m).powi(2)).sum::<f64>() / n;
                let nll = t
                    .iter()
                    .zip(mean)
                    .zip(var)
                    .map(|((y, m), v)| 0.5 * ((2.0 * std::f64::consts::PI * v).ln() + (y.as_f64() - m).powi(2) / v))
                    .sum::<f64>()
                    / n;
                Self::Regression { mse, nll }
            }
            _ => Self::None,
        }
    }

    /// As a JSON object (`{}` for [`PredictiveMetrics::None`]).
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Self::Classification { accuracy, nll, ece, brier, confidence } => serde_json::json!({
                "accuracy": accuracy, "nll": nll, "ece": ece, "brier": brier, "confidence": confidence,
            }),
            Self::Regression { mse, nll } => serde_json::json!({"mse": mse, "nll": nll}),
            Self::None => serde_json::json!({}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_metrics_match_their_formulas() {
        let d = Dataset::<f64> {
            n: 2,
            x: vec![0.0, 0.0],
            sample_shape: vec![1],
            y: Targets::Dense(vec![1.0, -1.0]),
            target_width: 1,
        };
        let m = PredictiveMetrics::of(&d, Likelihood::Regression, &[0.5, -2.0], &[1.0, 4.0], 1, 10);
        let mse = (0.25 + 1.0) / 2.0;
        let two_pi = 2.0 * std::f64::consts::PI;
        let nll = 0.5 * ((two_pi).ln() + 0.25 + (two_pi * 4.0).ln() + 1.0 / 4.0) / 2.0;
        let PredictiveMetrics::Regression { mse: a, nll: b } = m else { panic!("{m:?}") };
        assert!((a - mse).abs() < 1e-15 && (b - nll).abs() < 1e-15, "{m:?}");
        // classification data under a regression likelihood: no metrics
        let dc = Dataset::<f64> {
            n: 2,
            x: vec![0.0, 0.0],
            sample_shape: vec![1],
            y: Targets::Classes(vec![0, 1]),
            target_width: 0,
        };
        assert_eq!(
            PredictiveMetrics::of(&dc, Likelihood::Regression, &[0.5, 0.5], &[1.0, 1.0], 1, 10),
            PredictiveMetrics::None
        );
    }

    #[test]
    fn classification_metrics_match_their_formulas() {
        let d = Dataset::<f64> {
            n: 2,
            x: vec![0.0, 0.0],
            sample_shape: vec![1],
            y: Targets::Classes(vec![0, 1]),
            target_width: 0,
        };
        let p = [0.9, 0.1, 0.6, 0.4];
        let m = PredictiveMetrics::of(&d, Likelihood::Classification, &p, &[], 2, 10);
        let PredictiveMetrics::Classification { accuracy, nll, brier, confidence, .. } = m else { panic!("{m:?}") };
        assert_eq!(accuracy, 0.5);
        assert!((nll - (-(0.9f64.ln()) - 0.4f64.ln()) / 2.0).abs() < 1e-15);
        assert!((brier - ((0.01 + 0.01) + (0.36 + 0.36)) / 2.0).abs() < 1e-15);
        assert!((confidence - 0.75).abs() < 1e-15);
        assert_eq!(m.to_json()["accuracy"], 0.5);
    }
}
