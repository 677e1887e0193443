//! Exact curvature diagonals against the float64 references of `testdata/reference` and
//! `testdata/extra` (`ggn_diag.npy`, `hessian_diag.npy`, and the diagonal of `ef.npy`), with
//! the data unsplit and split into the `batch_size` of `meta.json`: relative error ≤ 1e-10.

mod common;

use common::*;
use curvops::diag::{ef_diag, ggn_diag, hessian_diag};
use curvops::ActiveSet;

const TOL: f64 = 1e-10;

#[test]
fn diagonals_match_references() {
    let mut log = ErrorLog::new(TOL);
    let all_names = PROBLEMS.iter().map(|p| (false, *p)).chain(EXTRA.iter().map(|p| (true, *p)));
    for (extra, name) in all_names {
        let (p, r) = if extra { Reference::load_extra(name) } else { Reference::load(name) };
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        let (_, ef) = r.array("ef");
        let ef_d: Vec<f64> = (0..d).map(|i| ef[i * d + i]).collect();
        for bs in [0, r.batch_size()] {
            let what = format!("{name} bs={bs}");
            log.rel("ggn_diag", &what, &ggn_diag(&p, &all, bs), &r.array("ggn_diag").1);
            log.rel("hessian_diag", &what, &hessian_diag(&p, &all, bs), &r.array("hessian_diag").1);
            log.rel("ef_diag", &what, &ef_diag(&p, &all, bs), &ef_d);
        }
    }
    log.finish();
}
