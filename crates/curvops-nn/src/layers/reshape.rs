//! Layers that pass values through unchanged: `flatten` (row-major over `[C, H, W]`, as
//! `nn.Flatten`, or over a range of axes as `nn.Flatten(start_dim, end_dim)`), `reshape`
//! (row-major, as `torch.reshape` of each sample) and `dropout` (the identity in evaluation
//! mode).
//!
//! The flat row-major data of every sample is unchanged, only the per-sample shape differs:
//! `y = x` as vectors, so `dy = dx`, `g_x = g` and `R(g_x) = R(g)` (no second-order terms, the
//! primal `g` is not read). A permutation of the axes moves data; it is
//! [`Permute`](super::index::Permute).

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::Float;

/// The identity on values, with a possibly different per-sample shape.
#[derive(Clone, Debug)]
pub struct Identity {
    kind: &'static str,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl Identity {
    /// `flatten`: `[d1, …, dm]` → `[d1·…·dm]`.
    pub fn flatten(in_shape: Vec<usize>) -> Self {
        let n = in_shape.iter().product();
        Self { kind: "flatten", in_shape, out_shape: vec![n] }
    }
    /// `dropout` in evaluation mode.
    pub fn dropout(shape: Vec<usize>) -> Self {
        Self { kind: "dropout", in_shape: shape.clone(), out_shape: shape }
    }

    /// `reshape` of each sample to `target` (row-major, as `x.reshape(N, *target)`). One entry
    /// may be `−1`: it is inferred from the others. Errors for another negative entry, a second
    /// `−1`, or when the number of entries does not match.
    pub fn reshape(in_shape: Vec<usize>, target: Vec<i64>) -> Result<Self, String> {
        let total: usize = in_shape.iter().product();
        let bad = || format!("cannot reshape per-sample shape {in_shape:?} ({total} entries) to {target:?}");
        let mut infer = None;
        let mut known = 1usize;
        for (a, &t) in target.iter().enumerate() {
            match t {
                -1 if infer.is_none() => infer = Some(a),
                -1 => return Err(format!("{}: only one entry may be -1", bad())),
                t if t < 0 => return Err(format!("{}: entry {t} is negative", bad())),
                t => known = known.checked_mul(t as usize).ok_or_else(bad)?,
            }
        }
        let mut out_shape: Vec<usize> = target.iter().map(|&t| t.max(0) as usize).collect();
        match infer {
            Some(a) => {
                // the inferred size `total / known` must account for every entry
                out_shape[a] = match total.checked_div(known) {
                    Some(v) if v * known == total => v,
                    _ => return Err(bad()),
                };
            }
            None if known != total => return Err(bad()),
            None => {}
        }
        Ok(Self { kind: "reshape", in_shape, out_shape })
    }

    /// `flatten` as `nn.Flatten(start_dim, end_dim)`: the axes `start_dim..=end_dim` merged into
    /// one. The axes count the batch axis, as in `nn.Flatten` (`start_dim = 1` is the first
    /// per-sample axis; negative values count from the end, `−1` is the last axis). Errors for
    /// an axis out of range, `start_dim > end_dim`, or `start_dim = 0` (the batch axis cannot be
    /// merged sample by sample). `flatten_dims(s, 1, -1)` is [`Identity::flatten`].
    pub fn flatten_dims(in_shape: Vec<usize>, start_dim: i64, end_dim: i64) -> Result<Self, String> {
        let rank = in_shape.len() as i64 + 1; // with the batch axis
        let norm = |d: i64, what: &str| -> Result<usize, String> {
            let v = if d < 0 { d + rank } else { d };
            if v < 0 || v >= rank {
                return Err(format!(
                    "flatten {what} {d} is out of range for a batch of per-sample shape {in_shape:?} \
                     (rank {rank} with the batch axis)"
                ));
            }
            Ok(v as usize)
        };
        let (s, e) = (norm(start_dim, "start_dim")?, norm(end_dim, "end_dim")?);
        if s == 0 {
            return Err("flatten start_dim 0 would merge the batch axis, which cannot be done per sample".into());
        }
        if s > e {
            return Err(format!("flatten start_dim {start_dim} comes after end_dim {end_dim}"));
        }
        // per-sample axes s-1 ..= e-1
        let mut out_shape = in_shape[..s - 1].to_vec();
        out_shape.push(in_shape[s - 1..e].iter().product());
        out_shape.extend_from_slice(&in_shape[e..]);
        Ok(Self { kind: "flatten", in_shape, out_shape })
    }
}

impl<T: Float> Layer<T> for Identity {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn training_note(&self) -> Option<&'static str> {
        (self.kind == "dropout").then_some("dropout is the identity during training (evaluation mode)")
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn in_shape(&self) -> &[usize] {
        &self.in_shape
    }
    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn forward(&self, _p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        (x.to_vec(), Aux::None)
    }
    fn jvp_input(&self, _c: &Ctx<T>, dx: &[T], _k: usize) -> Vec<T> {
        dx.to_vec()
    }
    fn vjp_input(&self, _c: &Ctx<T>, g: &[T], _k: usize) -> Vec<T> {
        g.to_vec()
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
    fn hvp_backward(
        &self,
        _c: &Ctx<T>,
        _rx: Option<&[T]>,
        _dp: &ParamIn<T>,
        _g: &[T],
        rg: &[T],
        _k: usize,
        _rgrad: &mut ParamOut<T>,
        want_input: bool,
    ) -> Option<Vec<T>> {
        want_input.then(|| rg.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::check_rules;
    use curvops_tensor::rng::Rng;

    fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| r.normal()).collect()
    }

    /// Shapes as expected, values passed through, and all rules.
    fn check(name: &str, node: &Identity, out: &[usize], r: &mut Rng) {
        assert_eq!(Layer::<f64>::out_shape(node), out, "{name}: output shape");
        assert_eq!(Layer::<f64>::in_size(node), Layer::<f64>::out_size(node), "{name}: size");
        for n in [1, 3] {
            let x = randn(r, n * Layer::<f64>::in_size(node));
            assert_eq!(node.forward(&[], &x, n).0, x, "{name}: forward");
            check_rules(&format!("{name} n={n}"), node, &[], std::slice::from_ref(&x), &[true], n, 1e-7);
        }
    }

    #[test]
    fn flatten_dropout() {
        let mut r = Rng::new(61);
        check("flatten", &Identity::flatten(vec![2, 3, 2]), &[12], &mut r);
        check("dropout", &Identity::dropout(vec![4, 2]), &[4, 2], &mut r);
        assert_eq!(Layer::<f64>::kind(&Identity::flatten(vec![2])), "flatten");
        assert_eq!(Layer::<f64>::kind(&Identity::dropout(vec![2])), "dropout");
    }

    #[test]
    fn reshape_targets() {
        let mut r = Rng::new(62);
        let cases: Vec<(Vec<usize>, Vec<i64>, Vec<usize>)> = vec![
            (vec![2, 3, 4], vec![6, 4], vec![6, 4]),
            (vec![2, 3, 4], vec![-1, 4], vec![6, 4]),
            (vec![2, 3, 4], vec![2, -1], vec![2, 12]),
            (vec![2, 3, 4], vec![-1], vec![24]),
            (vec![12], vec![3, -1, 2], vec![3, 2, 2]),
            (vec![12], vec![1, 12, 1], vec![1, 12, 1]),
            (vec![4, 5], vec![20], vec![20]),
        ];
        for (s, t, out) in cases {
            let node = Identity::reshape(s.clone(), t.clone()).unwrap();
            assert_eq!(Layer::<f64>::kind(&node), "reshape");
            check(&format!("reshape {s:?} to {t:?}"), &node, &out, &mut r);
        }
        // random shapes, each axis inferred in turn
        for _ in 0..3 {
            let s: Vec<usize> = (0..3).map(|_| 1 + r.below(4) as usize).collect();
            for a in 0..3 {
                let mut t: Vec<i64> = s.iter().rev().map(|&d| d as i64).collect();
                let out: Vec<usize> = s.iter().rev().copied().collect();
                t[a] = -1;
                check(&format!("reshape {s:?} to {t:?}"), &Identity::reshape(s.clone(), t).unwrap(), &out, &mut r);
            }
        }
    }

    #[test]
    fn reshape_errors() {
        assert!(Identity::reshape(vec![2, 3], vec![4, 2]).unwrap_err().contains("[2, 3]"));
        assert!(Identity::reshape(vec![2, 3], vec![4, -1]).is_err());
        assert!(Identity::reshape(vec![2, 3], vec![-1, -1]).is_err());
        assert!(Identity::reshape(vec![2, 3], vec![-2, -3]).is_err());
        assert!(Identity::reshape(vec![2, 3], vec![0, -1]).is_err());
    }

    #[test]
    fn flatten_dims_variants() {
        let mut r = Rng::new(63);
        let s = vec![2, 3, 4]; // a batch [N, 2, 3, 4]
        let cases: Vec<(i64, i64, Vec<usize>)> = vec![
            (1, -1, vec![24]),
            (1, 3, vec![24]),
            (2, 3, vec![2, 12]),
            (1, 2, vec![6, 4]),
            (-2, -1, vec![2, 12]),
            (-3, -2, vec![6, 4]),
            (2, 2, vec![2, 3, 4]),
            (3, -1, vec![2, 3, 4]),
            (1, 1, vec![2, 3, 4]),
        ];
        for (a, b, out) in cases {
            let node = Identity::flatten_dims(s.clone(), a, b).unwrap();
            assert_eq!(Layer::<f64>::kind(&node), "flatten");
            check(&format!("flatten_dims({a}, {b})"), &node, &out, &mut r);
        }
        let node = Identity::flatten_dims(vec![5, 2], 1, -1).unwrap();
        assert_eq!(Layer::<f64>::out_shape(&node), Layer::<f64>::out_shape(&Identity::flatten(vec![5, 2])));
        // errors: the batch axis, out of range, start after end
        assert!(Identity::flatten_dims(s.clone(), 0, -1).unwrap_err().contains("batch"));
        assert!(Identity::flatten_dims(s.clone(), -4, -1).is_err());
        assert!(Identity::flatten_dims(s.clone(), 1, 4).is_err());
        assert!(Identity::flatten_dims(s.clone(), 4, 4).is_err());
        assert!(Identity::flatten_dims(s.clone(), -5, -1).is_err());
        assert!(Identity::flatten_dims(s.clone(), 3, 2).unwrap_err().contains("after"));
        assert!(Identity::flatten_dims(vec![], 1, -1).is_err());
    }
}
