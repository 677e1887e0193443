//! Exact curvature diagonals against the float64 references of `testdata/reference` and
//! `testdata/extra` (`ggn_diag.npy`, `hessian_diag.npy`, and the diagonal of `ef.npy`), with
//! the data unsplit and split into the `batch_size` of `meta.json`: relative error ≤ 1e-10.

use crate::common::*;
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

/// The graph references (`../shared/reference-graph`: residual block with batch norm, LayerNorm
/// MLP, tiny GPT with a tied embedding): GGN, Hessian and EF diagonals, unbatched and at
/// `meta.json`'s batch size. The Hessian takes the residual columns on the ResNet block (ReLU,
/// batch norm, fan-out) and Hessian-vector products on the LayerNorm / attention models.
#[test]
fn diagonals_match_graph_references() {
    use curvops::diag::{hessian_diag_plan, HessianDiagMethod};
    let mut log = ErrorLog::new(TOL);
    for name in GRAPH_PROBLEMS {
        let (p, r) = Reference::load_graph(name);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        let (_, ef) = r.array("ef");
        let ef_d: Vec<f64> = (0..d).map(|i| ef[i * d + i]).collect();
        let plan = hessian_diag_plan(&p.net, &all, HessianDiagMethod::Auto);
        let want_plan = if name == "resnet_block_ce" { HessianDiagMethod::Residual } else { HessianDiagMethod::Hvp };
        assert_eq!(plan, want_plan, "{name}: Hessian diagonal method");
        for bs in [0, r.batch_size()] {
            let what = format!("{name} bs={bs}");
            log.rel("graph ggn_diag", &what, &ggn_diag(&p, &all, bs), &r.array("ggn_diag").1);
            log.rel("graph hessian_diag", &what, &hessian_diag(&p, &all, bs), &r.array("hessian_diag").1);
            log.rel("graph ef_diag", &what, &ef_diag(&p, &all, bs), &ef_d);
        }
    }
    log.finish();
}

/// Both Hessian-diagonal methods on the chain references: the residual columns and the
/// Hessian-vector products agree with `hessian_diag.npy`.
#[test]
fn hessian_diagonal_methods_agree_on_chains() {
    use curvops::diag::{hessian_diag_by, HessianDiagMethod};
    let mut log = ErrorLog::new(TOL);
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        let want = r.array("hessian_diag").1;
        for m in [HessianDiagMethod::Residual, HessianDiagMethod::Hvp] {
            log.rel(&format!("hessian_diag {m:?}"), name, &hessian_diag_by(&p, &all, r.batch_size(), m), &want);
        }
    }
    log.finish();
}
