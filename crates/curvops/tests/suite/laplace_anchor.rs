//! The same numbers as laplace-torch 0.3: on `testdata/laplace` (digits, an MLP 64-24-10 trained
//! by PyTorch, and `anchor.json` computed by laplace-torch in f64; `make_fixture.py` made it) and
//! on a second fixture made the same way with another seed and width (`seed7`: MLP 64-16-10),
//! the log marginal likelihood and the probit predictive's test accuracy, NLL and ECE of
//! full/all, diag/all, KFAC/all and full/last-layer at τ ∈ {0.1, 1, 10} agree to 1e-6
//! relative, and the τ maximizing the marginal likelihood to 2 % (laplace-torch's 100 Adam
//! steps stop near the exact optimum computed here).

use curvops::laplace::marglik::{optimize_marglik, MarglikOptions};
use curvops::laplace::{self, HessianStructure, LaplaceOptions, Link, Posterior, PriorPrecision};
use curvops::{metrics, ActiveSet, Curvature, Problem};
use curvops_nn::io::load_problem;
use curvops_nn::Targets;
use std::path::PathBuf;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/laplace").join(sub)
}

fn check_fixture(sub: &str) {
    let d = dir(sub);
    let p: Problem<f64> =
        load_problem(&d.join("model.json"), &d.join("trained.safetensors"), &d.join("train.safetensors")).unwrap();
    let t: Problem<f64> =
        load_problem(&d.join("model.json"), &d.join("trained.safetensors"), &d.join("test.safetensors")).unwrap();
    let anchor: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("anchor.json")).unwrap()).unwrap();
    let Targets::Classes(y) = &t.data.y else { panic!() };
    let c = p.net.out_size();
    let close = |got: f64, want: f64, what: &str| {
        let r = (got - want).abs() / want.abs().max(1e-300);
        assert!(r <= 1e-6, "{sub} {what}: ours {got} laplace-torch {want} (rel {r:.2e})");
    };
    // MAP
    let map =
        laplace::predictive::map_predict(&p.net, &p.theta, &t.data.x, t.data.n, laplace::Likelihood::Classification);
    let m = metrics::metrics(&map, c, y);
    close(m.accuracy, anchor["map"]["accuracy"].as_f64().unwrap(), "MAP accuracy");
    close(m.nll, anchor["map"]["nll"].as_f64().unwrap(), "MAP nll");
    close(m.ece, anchor["map"]["ece"].as_f64().unwrap(), "MAP ece");
    let last = p.net.layers.iter().rposition(|l| l.num_params() > 0).unwrap();
    for (key, st, active) in [
        ("full_all", HessianStructure::Full, ActiveSet::all(&p.net.layout)),
        ("diag_all", HessianStructure::Diag, ActiveSet::all(&p.net.layout)),
        ("kron_all", HessianStructure::Kron, ActiveSet::all(&p.net.layout)),
        ("full_lastlayer", HessianStructure::Full, ActiveSet::from_names(&p.net.layout, &[last.to_string()]).unwrap()),
    ] {
        let opts = LaplaceOptions { structure: st, curvature: Curvature::Ggn, batch_size: 100, ..Default::default() };
        let fit = laplace::fit(&p, active, None, &opts, &|_, _| {}).unwrap();
        for tau in ["0.1", "1.0", "10.0"] {
            let a = &anchor[key]["fixed"][tau];
            let post = Posterior::new(&fit, PriorPrecision::Scalar(tau.parse().unwrap()), 1.0, 1.0).unwrap();
            close(
                post.log_marginal_likelihood(),
                a["log_marginal_likelihood"].as_f64().unwrap(),
                &format!("{key} τ={tau} lml"),
            );
            let probs = post.predict_probs(&t.net, &t.data.x, t.data.n, Link::Probit);
            let m = metrics::metrics(&probs, c, y);
            close(m.accuracy, a["accuracy"].as_f64().unwrap(), &format!("{key} τ={tau} accuracy"));
            close(m.nll, a["nll"].as_f64().unwrap(), &format!("{key} τ={tau} nll"));
            close(m.ece, a["ece"].as_f64().unwrap(), &format!("{key} τ={tau} ece"));
        }
        let r = optimize_marglik(&fit, &MarglikOptions::default()).unwrap();
        let PriorPrecision::Scalar(tau) = r.prior else { panic!() };
        let want = anchor[key]["marglik_tau"].as_f64().unwrap();
        assert!((tau - want).abs() / want < 0.02, "{sub} {key}: marglik τ ours {tau} laplace-torch {want}");
    }
}

#[test]
fn digits_fixture_matches_laplace_torch() {
    check_fixture("");
}

#[test]
fn second_fixture_matches_laplace_torch() {
    check_fixture("seed7");
}

/// The library example of docs/laplace.md, on the fixture.
#[test]
fn library_example_of_the_docs() -> Result<(), Box<dyn std::error::Error>> {
    use curvops::laplace::io;
    use curvops::LinearOperator;
    let d = dir("");
    let out = std::env::temp_dir().join(format!("curvops-laplace-doc-{}.safetensors", std::process::id()));
    let p = load_problem::<f64>(&d.join("model.json"), &d.join("trained.safetensors"), &d.join("train.safetensors"))?;
    let test = load_problem::<f64>(&d.join("model.json"), &d.join("trained.safetensors"), &d.join("test.safetensors"))?;
    let opts = LaplaceOptions { structure: HessianStructure::Kron, curvature: Curvature::Ggn, ..Default::default() };
    let fit = laplace::fit(&p, ActiveSet::all(&p.net.layout), None, &opts, &|_, _| {})?;
    let best = optimize_marglik(&fit, &MarglikOptions::default())?;
    let post = Posterior::new(&fit, best.prior.clone(), 1.0, 1.0)?;
    let lml = post.log_marginal_likelihood();
    let probs = post.predict_probs(&p.net, &test.data.x, test.data.n, Link::Probit);
    let Targets::Classes(y) = &test.data.y else { unreachable!() };
    let m = metrics::metrics(&probs, p.net.out_size(), y);
    let draws = post.sample(8, 0);
    let cov = post.covariance_op();
    io::save(&out, &p.net, &fit, &best.prior, 1.0, 1.0, lml)?;
    assert!((lml - best.log_marginal_likelihood).abs() < 1e-9 * lml.abs());
    assert!(m.accuracy > 0.9 && m.nll > 0.0);
    assert_eq!((draws.nrows(), draws.ncols()), (fit.dim(), 8));
    assert_eq!(cov.nrows(), fit.dim());
    let _ = std::fs::remove_file(&out);
    Ok(())
}
