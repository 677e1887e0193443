//! Metrics of predictive distributions: accuracy, negative log-likelihood, Brier score,
//! expected calibration error (ECE) with its reliability diagram, and OOD detection AUROC.
//!
//! Probabilities are row-major `[N, C]` (rows sum to one), labels are class indices. All
//! metrics are accumulated in `f64`.
//!
//! * accuracy: the fraction of samples whose arg-max class (the first maximal entry) is the
//!   label;
//! * NLL: `−1/N Σ_n log max(p_n[y_n], 1e-300)`;
//! * Brier: `1/N Σ_n Σ_c (p_n[c] − 1[c = y_n])²`;
//! * ECE with `B` equal-width bins of the top-class confidence `conf_n = max_c p_n[c]`, bin `b`
//!   being `(e_b, e_{b+1}]` with PyTorch's `linspace(0, 1, B + 1)` edges (SPEC.md §4):
//!   `ECE = Σ_b |S_b|/N · |acc(S_b) − conf(S_b)|`;
//! * AUROC of telling in-distribution from out-of-distribution inputs by the score
//!   `max_c p[c]` (higher = in-distribution): the Mann–Whitney statistic
//!   `P(s_in > s_out) + ½ P(s_in = s_out)`.

use curvops_plot::{LinePlot, Series};

/// Accuracy, NLL, Brier score and ECE of one predictive distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Fraction of correct arg-max predictions.
    pub accuracy: f64,
    /// Mean negative log-likelihood of the labels.
    pub nll: f64,
    /// Mean Brier score (summed over classes).
    pub brier: f64,
    /// Expected calibration error.
    pub ece: f64,
}

/// One bin of a reliability diagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge (exclusive).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Samples whose confidence falls in `(lo, hi]`.
    pub count: usize,
    /// Their accuracy (NaN for an empty bin).
    pub accuracy: f64,
    /// Their mean confidence (NaN for an empty bin).
    pub confidence: f64,
}

/// `torch.linspace(0, 1, bins + 1)` in f64 (the first half from 0 upwards, the second half
/// from 1 downwards, as PyTorch computes it).
pub fn bin_edges(bins: usize) -> Vec<f64> {
    let steps = bins + 1;
    let step = 1.0 / bins as f64;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { step * i as f64 } else { 1.0 - step * (steps - 1 - i) as f64 }).collect()
}

/// Index of the first maximal entry.
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Fraction of rows of `p` (`[N, C]`) whose arg-max is the label.
pub fn accuracy(p: &[f64], c: usize, y: &[usize]) -> f64 {
    let hits = y.iter().enumerate().filter(|(n, &yy)| argmax(&p[n * c..(n + 1) * c]) == yy).count();
    hits as f64 / y.len() as f64
}

/// Mean negative log-likelihood `−1/N Σ log max(p_n[y_n], 1e-300)`.
pub fn nll(p: &[f64], c: usize, y: &[usize]) -> f64 {
    -y.iter().enumerate().map(|(n, &yy)| p[n * c + yy].max(1e-300).ln()).sum::<f64>() / y.len() as f64
}

/// Mean Brier score `1/N Σ_n Σ_c (p_n[c] − 1[c = y_n])²`.
pub fn brier(p: &[f64], c: usize, y: &[usize]) -> f64 {
    let mut s = 0.0;
    for (n, &yy) in y.iter().enumerate() {
        for j in 0..c {
            let t = if j == yy { 1.0 } else { 0.0 };
            s += (p[n * c + j] - t).powi(2);
        }
    }
    s / y.len() as f64
}

/// The reliability diagram: `bins` equal-width bins `(lo, hi]` of the top-class confidence.
pub fn reliability(p: &[f64], c: usize, y: &[usize], bins: usize) -> Vec<ReliabilityBin> {
    let edges = bin_edges(bins);
    let mut count = vec![0usize; bins];
    let mut hits = vec![0usize; bins];
    let mut conf_sum = vec![0.0f64; bins];
    for (n, &yy) in y.iter().enumerate() {
        let row = &p[n * c..(n + 1) * c];
        let k = argmax(row);
        let conf = row[k];
        // bin b holds (edges[b], edges[b + 1]]
        if let Some(b) = (0..bins).find(|&b| conf > edges[b] && conf <= edges[b + 1]) {
            count[b] += 1;
            conf_sum[b] += conf;
            if k == yy {
                hits[b] += 1;
            }
        }
    }
    (0..bins)
        .map(|b| {
            let m = count[b] as f64;
            ReliabilityBin {
                lo: edges[b],
                hi: edges[b + 1],
                count: count[b],
                accuracy: if count[b] > 0 { hits[b] as f64 / m } else { f64::NAN },
                confidence: if count[b] > 0 { conf_sum[b] / m } else { f64::NAN },
            }
        })
        .collect()
}

/// Expected calibration error with `bins` equal-width bins (see the module docs).
pub fn ece(p: &[f64], c: usize, y: &[usize], bins: usize) -> f64 {
    let n = y.len() as f64;
    reliability(p, c, y, bins)
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum()
}

/// All metrics with the default 15 ECE bins.
pub fn metrics(p: &[f64], c: usize, y: &[usize]) -> Metrics {
    Metrics { accuracy: accuracy(p, c, y), nll: nll(p, c, y), brier: brier(p, c, y), ece: ece(p, c, y, 15) }
}

/// The maximum probability of each row (the confidence score for OOD detection).
pub fn max_prob(p: &[f64], c: usize) -> Vec<f64> {
    p.chunks_exact(c).map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max)).collect()
}

/// AUROC of separating in-distribution scores (positives, expected higher) from
/// out-of-distribution scores: `P(s_in > s_out) + ½ P(s_in = s_out)`, by sorting
/// (`O((n + m) log(n + m))`, ties counted by their average rank).
pub fn auroc(scores_in: &[f64], scores_out: &[f64]) -> f64 {
    let (n1, n0) = (scores_in.len(), scores_out.len());
    if n1 == 0 || n0 == 0 {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> =
        scores_in.iter().map(|&s| (s, true)).chain(scores_out.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    // sum of the (average) ranks of the positives
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * all[i..=j].iter().filter(|e| e.1).count() as f64;
        i = j + 1;
    }
    (rank_sum - (n1 * (n1 + 1)) as f64 / 2.0) / (n1 as f64 * n0 as f64)
}

/// A reliability diagram as SVG: accuracy per confidence bin (a step line per model, drawn
/// over the bin's width), with the diagonal of perfect calibration dashed.
pub fn reliability_svg(title: &str, models: &[(&str, &[ReliabilityBin])]) -> String {
    let mut plot = LinePlot::new(title)
        .x_label("confidence (max probability)")
        .y_label("accuracy")
        .x_range(0.0, 1.0)
        .y_range(0.0, 1.0)
        .with_series(Series::new("perfect calibration", vec![(0.0, 0.0), (1.0, 1.0)]).color("#777777").dashed());
    for (name, bins) in models {
        let mut pts = Vec::new();
        for b in bins.iter() {
            if b.count == 0 {
                pts.push((f64::NAN, f64::NAN));
                continue;
            }
            pts.push((b.lo, b.accuracy));
            pts.push((b.hi, b.accuracy));
        }
        plot.push(Series::new(*name, pts));
    }
    plot.to_svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_and_ece() {
        let e = bin_edges(15);
        assert_eq!(e.len(), 16);
        assert_eq!(e[0], 0.0);
        assert_eq!(e[15], 1.0);
        // two samples: confident and right, unsure and wrong
        let p = [0.9, 0.1, 0.4, 0.6];
        let y = [0, 0];
        assert_eq!(accuracy(&p, 2, &y), 0.5);
        let want = 0.5 * (1.0 - 0.9f64).abs() + 0.5 * (0.0 - 0.6f64).abs();
        assert!((ece(&p, 2, &y, 15) - want).abs() < 1e-15);
        assert!((nll(&p, 2, &y) - (-(0.9f64.ln() + 0.4f64.ln()) / 2.0)).abs() < 1e-15);
        assert!((brier(&p, 2, &y) - (0.01 + 0.01 + 0.36 + 0.36) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn auroc_ranks() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auroc(&[0.1], &[0.9]), 0.0);
        assert_eq!(auroc(&[0.5, 0.5], &[0.5]), 0.5);
    }
}
