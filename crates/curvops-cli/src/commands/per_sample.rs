//! `curvops per-sample --quantity …`.

use crate::args::{Common, Quantity};
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::gradient::{first_order, FirstOrder};
use curvops::{ActiveSet, Problem};
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::Path;

pub fn run<T: Float>(
    c: &Common,
    p: &Problem<T>,
    active: &ActiveSet,
    bs: usize,
    q: Quantity,
    out: &Path,
) -> CliResult<()> {
    let fq = match q {
        Quantity::Grad => FirstOrder::Grad,
        Quantity::BatchGrad => FirstOrder::BatchGrad,
        Quantity::L2 => FirstOrder::L2,
        Quantity::SumGradSquared => FirstOrder::SumGradSquared,
        Quantity::Variance => FirstOrder::Variance,
    };
    let (shape, v) = first_order(p, active, bs, fq);
    write_npy(out, &shape, &v).map_err(|e| e.to_string())?;
    let mut o = obj! {"quantity" => format!("{fq:?}"), "shape" => shape, "out" => out.display().to_string()};
    if fq == FirstOrder::L2 {
        let names: Vec<String> = active.names(&p.net.layout).iter().map(|(e, _)| e.name.clone()).collect();
        o.insert("columns".into(), serde_json::json!(names));
    }
    emit(c.json, o);
    Ok(())
}
