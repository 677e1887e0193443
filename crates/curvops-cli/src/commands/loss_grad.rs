//! `curvops loss-grad`.

use crate::args::Common;
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::gradient::loss_and_grad;
use curvops::{ActiveSet, Problem};
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::Path;

pub fn run<T: Float>(c: &Common, p: &Problem<T>, active: &ActiveSet, bs: usize, out: Option<&Path>) -> CliResult<()> {
    let (loss, g) = loss_and_grad(p, active, bs);
    if let Some(path) = out {
        write_npy(path, &[g.len()], &g).map_err(|e| e.to_string())?;
    }
    emit(c.json, obj! {"loss" => loss, "grad_norm" => curvops_tensor::ops::norm2(&g), "D" => g.len()});
    Ok(())
}
